// Dynamic-amax NVFP4 fake quantization hook (see dynamic_fake_quant.h).
#include "eval/dynamic_fake_quant.h"

#include "nvfp4/quantize.h"

namespace qad::eval {
namespace {

class DynamicNvfp4Hook final : public model::LinearQuantHook {
 public:
  torch::Tensor input(const torch::Tensor& x) override {
    return nvfp4::fake_quantize(x.contiguous(), nvfp4::compute_amax(x));
  }
  torch::Tensor weight(const torch::Tensor& w) override {
    // Weights are frozen in evaluation: quantize once per weight tensor (same storage = same weight).
    if (!cached_.defined() || source_.data_ptr() != w.data_ptr()) {
      torch::NoGradGuard no_grad;
      source_ = w;
      cached_ = nvfp4::fake_quantize(w.contiguous(), nvfp4::compute_amax(w));
    }
    return cached_;
  }

 private:
  torch::Tensor source_, cached_;
};

}  // namespace

int64_t apply_dynamic_fake_quant(model::CausalLM& lm) {
  int64_t n = 0;
  for (auto& linear : lm->linears()) {
    if (linear->name() == "lm_head") continue;
    linear->quant = std::make_shared<DynamicNvfp4Hook>();
    ++n;
  }
  return n;
}

}  // namespace qad::eval
