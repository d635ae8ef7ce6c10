// Fp8KvQuant: the FP8 E4M3 KV-cache emulation one attention layer carries (ModelOpt's k_bmm / v_bmm quantizers,
// what vLLM / SGLang / TensorRT-LLM do with an FP8 KV cache and a static per-tensor scale per layer). Keys (after
// q/k-norm and RoPE) and values (after v_proj) become e4m3(x / scale) * scale with fixed, calibrated float32
// scales; during calibration the hook records max |k| and max |v| over real tokens instead. Checkpoint and
// quantizer-state names: "<layer>.self_attn.k_proj.k_scale", "<layer>.self_attn.v_proj.v_scale" (ModelOpt's
// export names, which vLLM remaps to attn.k_scale / attn.v_scale). docs/quant.md, "FP8 KV cache".
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "model/causal_lm.h"
#include "model/layers.h"
#include "nvfp4/fake_quantize_autograd.h"

namespace qad::quant {

class Fp8KvQuant : public model::KVQuantHook {
 public:
  explicit Fp8KvQuant(std::string attention) : attention_(std::move(attention)) {}  // "model.layers.N.self_attn"

  std::pair<torch::Tensor, torch::Tensor> apply(const torch::Tensor& k, const torch::Tensor& v,
                                                const torch::Tensor& token_mask) override;

  const std::string& attention() const { return attention_; }
  std::string k_scale_name() const { return attention_ + ".k_proj.k_scale"; }
  std::string v_scale_name() const { return attention_ + ".v_proj.v_scale"; }

  // Float32 scalars (CPU after calibration or loading; moved to the tensors' device on use): the engines' k_scale /
  // v_scale, amax / 448. Undefined = not calibrated.
  torch::Tensor k_scale, v_scale;
  nvfp4::StraightThrough ste = nvfp4::StraightThrough::kIdentity;

  // Calibration: while on, apply() records max |k| and max |v| over the rows `token_mask` marks real and passes
  // k and v through unchanged.
  bool calibrating = false;
  torch::Tensor k_amax, v_amax;

 private:
  static const torch::Tensor& on_device(torch::Tensor& t, const torch::Device& d);
  std::string attention_;
};

// The KV hook of an attention layer, or nullptr.
Fp8KvQuant* kv_hook(const model::Attention& a);
// Every attention layer's hook, in layer order (nullptr where a layer has none).
std::vector<Fp8KvQuant*> kv_hooks(const model::CausalLM& lm);

// k_scale / v_scale of an amax: amax / 448 in float32.
float fp8_kv_scale(float amax);

}  // namespace qad::quant
