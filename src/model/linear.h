// qad::model::Linear: the one Linear module type of every decoder. It knows its HF module path and carries
// an optional quantization hook, so that NVFP4 fake quantization switches on for all of them in one place.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

namespace qad::model {

// Implemented by the quantization code (NVFP4 fake quant); applied inside Linear::forward.
struct LinearQuantHook {
  virtual ~LinearQuantHook() = default;
  virtual torch::Tensor input(const torch::Tensor& x) = 0;   // applied to the Linear's input
  virtual torch::Tensor weight(const torch::Tensor& w) = 0;  // applied to the weight before the matmul
};

class LinearImpl : public torch::nn::Module {
 public:
  // `name` is the HF module path ("model.layers.0.self_attn.q_proj"). Parameters are allocated
  // uninitialised: they are meant to be loaded (or initialised by the caller). own_weight = false: the
  // weight comes from share_weight() and is not registered here.
  LinearImpl(std::string name, int64_t in_features, int64_t out_features, bool bias, bool own_weight = true)
      : name_(std::move(name)), in_features_(in_features), out_features_(out_features) {
    if (own_weight) weight = register_parameter("weight", torch::empty({out_features, in_features}));
    if (bias) this->bias = register_parameter("bias", torch::empty({out_features}));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    if (quant) return torch::linear(quant->input(x), quant->weight(weight), bias);
    return torch::linear(x, weight, bias);
  }

  const std::string& name() const { return name_; }
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  // Tied embeddings: construct with own_weight = false, then share `w` (the embedding matrix) here; the
  // shared tensor then appears once in parameters() and in the optimizer (as the embedding).
  void share_weight(const torch::Tensor& w) { weight = w; }

  torch::Tensor weight;
  torch::Tensor bias;  // undefined when the layer has none
  std::shared_ptr<LinearQuantHook> quant;

 private:
  std::string name_;
  int64_t in_features_;
  int64_t out_features_;
};
TORCH_MODULE(Linear);

}  // namespace qad::model
