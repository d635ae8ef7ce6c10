// qad::model::Linear: the one Linear module type of every decoder. It knows its HF module path and carries
// an optional quantization hook, so that NVFP4 fake quantization switches on for all of them in one place.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>

namespace qad::model {

// What a fused kernel that produces a Linear's input must do to it in place of the hook's input(): nothing
// (amax undefined) or NVFP4 fake quantization with a fixed global amax.
struct FusedInputQuant {
  torch::Tensor amax;       // float32 scalar on the input's device; undefined = the input passes unchanged
  float amax_value = 0.0f;  // the same value on the host: a fused group compares its members' without a sync
  bool clipped_ste = false;
};

// Implemented by the quantization code (NVFP4 fake quant); applied inside Linear::forward.
struct LinearQuantHook {
  virtual ~LinearQuantHook() = default;
  virtual torch::Tensor input(const torch::Tensor& x) = 0;   // applied to the Linear's input
  virtual torch::Tensor weight(const torch::Tensor& w) = 0;  // applied to the weight before the matmul
  // input() as a fixed transformation a fused kernel may apply instead (the Linear is then called through
  // forward_prequantized). nullopt: input() must run itself (it is not such a function, e.g. it calibrates).
  virtual std::optional<FusedInputQuant> fused_input(const torch::Device& /*device*/) { return std::nullopt; }
  // Forget whatever was derived from the weight and kept (a quantized copy): fully sharded training releases the
  // layer's weights and wants their memory back (train/fully_sharded.h).
  virtual void drop_cached() {}
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

  // forward() for an input that already went through what fused_input() described.
  torch::Tensor forward_prequantized(const torch::Tensor& x) {
    return torch::linear(x, quant ? quant->weight(weight) : weight, bias);
  }

  // What a fused kernel may do to this Linear's input in place of forward()'s input(): see LinearQuantHook.
  std::optional<FusedInputQuant> fused_input(const torch::Device& device) {
    return quant ? quant->fused_input(device) : std::optional<FusedInputQuant>(FusedInputQuant{});
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
