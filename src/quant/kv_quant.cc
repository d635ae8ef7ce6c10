// The FP8 KV-cache hook of one attention layer (see kv_quant.h).
#include "quant/kv_quant.h"

#include "nvfp4/e4m3.h"
#include "nvfp4/fp8.h"
#include "util/error.h"

namespace qad::quant {
namespace {

// max |x| over the real tokens of x [B, H, T, D] (token_mask [B, T], 1 = real), as a float32 scalar; the whole
// tensor when there is no mask of that shape.
torch::Tensor masked_amax(const torch::Tensor& x, const torch::Tensor& token_mask) {
  auto a = x.detach().abs();
  if (token_mask.defined() && x.dim() == 4 && token_mask.dim() == 2 && token_mask.size(0) == x.size(0) &&
      token_mask.size(1) == x.size(2)) {
    // Padding rows are real computations on pad embeddings; they must not set the static scale.
    auto rows = a.amax({1, 3}).to(torch::kFloat32);  // [B, T]
    return rows.masked_fill(token_mask.to(x.device(), torch::kBool).logical_not(), 0.0f).max();
  }
  return a.max().to(torch::kFloat32);
}

}  // namespace

const torch::Tensor& Fp8KvQuant::on_device(torch::Tensor& t, const torch::Device& d) {
  // Hooks are not registered modules, so lm->to(device) does not move their scales: follow the tensors.
  if (t.device() != d) t = t.to(d);
  return t;
}

std::pair<torch::Tensor, torch::Tensor> Fp8KvQuant::apply(const torch::Tensor& k, const torch::Tensor& v,
                                                          const torch::Tensor& token_mask) {
  if (calibrating) {
    torch::NoGradGuard no_grad;
    auto ka = masked_amax(k, token_mask), va = masked_amax(v, token_mask);
    k_amax = k_amax.defined() ? torch::maximum(k_amax, ka) : ka;
    v_amax = v_amax.defined() ? torch::maximum(v_amax, va) : va;
    return {k, v};
  }
  QAD_CHECK(k_scale.defined() && v_scale.defined(), "{}: the FP8 KV-cache quantizer is not calibrated (run "
            "quant::calibrate, or load a quantizer state or an export with k_scale / v_scale, before the forward)",
            attention_);
  return {nvfp4::fp8_fake_quantize_ste(k, on_device(k_scale, k.device()), ste),
          nvfp4::fp8_fake_quantize_ste(v, on_device(v_scale, v.device()), ste)};
}

Fp8KvQuant* kv_hook(const model::Attention& a) { return dynamic_cast<Fp8KvQuant*>(a->kv_quant.get()); }

std::vector<Fp8KvQuant*> kv_hooks(const model::CausalLM& lm) {
  std::vector<Fp8KvQuant*> out;
  for (const auto& layer : lm->model->layer_list) out.push_back(kv_hook(layer->self_attn));
  return out;
}

float fp8_kv_scale(float amax) { return amax / nvfp4::kE4M3Max; }

}  // namespace qad::quant
