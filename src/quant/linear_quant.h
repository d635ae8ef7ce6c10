// NvFp4LinearQuant: the NVFP4 fake-quant hook one quantized model::Linear carries. Weight and input are
// fake-quantized with FIXED global amaxes (calibrated once) and dynamic block scales (or, for the weight, static
// block scales chosen once by an MSE search and then frozen: docs/quant.md, "Static block scales"); during calibration the
// hook passes tensors through unchanged and records the input amax instead. Deterministic (activation
// checkpointing re-runs it). The fake-quantized weight is kept between calls: the weights change only at the
// optimizer step, so a training step quantizes each weight once, not in every forward and recompute.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

#include "model/causal_lm.h"
#include "model/linear.h"
#include "nvfp4/fake_quantize_autograd.h"

namespace qad::quant {

class NvFp4LinearQuant : public model::LinearQuantHook {
 public:
  explicit NvFp4LinearQuant(std::string module) : module_(std::move(module)) {}

  torch::Tensor input(const torch::Tensor& x) override;
  torch::Tensor weight(const torch::Tensor& w) override;
  // Fixed once calibrated: the identity without input quantization, the static fake quantization otherwise;
  // nullopt while calibrating.
  std::optional<model::FusedInputQuant> fused_input(const torch::Device& device) override;

  void drop_cached() override { cache_ = WeightCache{}; }

  const std::string& module() const { return module_; }

  // Float32 scalars (any device; moved to the tensor's device on use). Undefined = not calibrated.
  torch::Tensor input_amax;
  torch::Tensor weight_amax;
  bool quantize_inputs = true;
  bool quantize_weights = true;  // false for imported checkpoints, whose weights already are NVFP4 values
  // FP8 instead of NVFP4 (QuantConfig::fp8_layers; docs/quant.md, "Mixed precision: FP8 layers"): W8A8 with per-tensor
  // scales, weight_amax / 448 and input_amax / 448 (static), e4m3(x / s) * s on the weight and the input
  // (nvfp4/fp8.h). Block scales do not apply; the fused-kernel input path is not used (fused_input: nullopt).
  bool fp8 = false;
  // Static block scales: the weight's per-16-block E4M3 scale codes, uint8 [out, in/16] (exactly the exported
  // weight_scale), fixed: neither learned nor recomputed from the live weight. Used when `static_block_scales` is
  // set (apply_nvfp4 with block_scales static_mse, a quantizer state or an import that has them); until calibrate()
  // chose them the weight forward refuses. Any device (moved to the weight's on use).
  bool static_block_scales = false;
  torch::Tensor block_scale;
  nvfp4::StraightThrough ste = nvfp4::StraightThrough::kIdentity;

  // Calls that reused the cached quantized weight / that quantized it (tests and benchmarks read these).
  int64_t weight_cache_hits = 0, weight_cache_misses = 0;

  // Calibration: while on, input() records max |x| (over rows where `calib_mask` is set, when it matches x's
  // leading dims) into calib_amax and nothing is quantized.
  bool calibrating = false;
  torch::Tensor calib_amax;
  std::shared_ptr<torch::Tensor> calib_mask;  // shared by all hooks of a model during calibration

 private:
  static torch::Tensor on_device(torch::Tensor& t, const torch::Device& d);
  // fake_quantize(w, weight_amax) (with the static block scales when set), recomputed only when w, the amax or the
  // block scales changed (another tensor, or the same one written in place: its version counter moved) since the
  // last call.
  torch::Tensor cached_weight(const torch::Tensor& w);
  std::string module_;
  struct WeightCache {
    const void* impl = nullptr;
    const void* data = nullptr;
    int64_t version = -1;
    const void* amax_impl = nullptr;
    int64_t amax_version = -1;
    const void* scales_impl = nullptr;  // the static block scales, nullptr for dynamic ones
    int64_t scales_version = -1;
    torch::Tensor value;  // detached
  } cache_;
  // input_amax's value on the host, read once per tensor and version (in-place changes bump the version), so
  // fused_input() does not synchronise with the device on every call.
  torch::Tensor amax_seen_;
  int64_t amax_seen_version_ = -1;
  float amax_seen_value_ = 0.0f;
};

// The hook of `l`, or nullptr when it has none or one of another kind.
NvFp4LinearQuant* nvfp4_hook(const model::Linear& l);

// The fused group a module belongs to: "<layer>.self_attn.qkv" for q/k/v_proj, "<layer>.mlp.gate_up" for
// gate/up_proj; empty for modules engines do not fuse.
std::string fused_group(const std::string& module);

// fnmatch glob over a module name ('*' matches dots too, as Python's fnmatch that ModelOpt and vLLM use).
bool glob_match(const std::string& pattern, const std::string& name);

// A float32 amax A whose decode scale A / denominator (computed as the kernels do) is exactly `scale`: the amax that
// reproduces a checkpoint's stored weight_scale_2 / input_scale (NVFP4: 2688; FP8 per-tensor scales: 448). Warns
// naming `what` and takes the nearest when none exists.
float amax_for_scale(float scale, const std::string& what, float denominator = 2688.0f);

// The FP8 per-tensor scale of an amax, amax / 448 in float32, as a tensor on the amax's device.
torch::Tensor fp8_scale(const torch::Tensor& amax);

}  // namespace qad::quant
