// AdamW with FP32 master weights: the model may compute in BF16, the update happens on an FP32 copy that is
// then rounded into the model (on CPU the model is FP32 and the master is the parameter itself; FP64
// parameters, used by tests, keep FP64 state). The
// update is PyTorch's AdamW (decoupled weight decay, bias-corrected moments); its state is a flat list of
// named tensors so checkpoints store it as safetensors.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "train/config.h"

namespace qad::train {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// What the training step needs from an optimizer: AdamW here (one process or plain data parallel, every rank
// holding all the state) and ShardedAdamW (train/sharded_adamw.h, ZeRO-1). In data parallel each call is made
// by every rank; grad_norm, step and state may be collectives.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual double grad_norm() const = 0;
  virtual void scale_grads(double factor) = 0;
  virtual void step(double lr) = 0;
  virtual void zero_grad() = 0;
  virtual int64_t steps() const = 0;
  // The whole state by name, in AdamW's naming on every implementation (so a checkpoint resumes on any
  // number of ranks). Sharded implementations return it on rank 0 only (empty elsewhere).
  virtual NamedTensors state() const = 0;
  virtual void load_state(const NamedTensors& state, int64_t steps) = 0;

  // The step without host synchronisation. Where device_step_available(), train_step takes the gradient norm as a
  // device tensor, computes the clipping factor and the finite check on the device, calls step_on_device (which
  // multiplies the gradients by grad_scale and updates nothing where apply is 0; both FP32 0-dim on the
  // parameters' device) and, once it has read the check at the end of the step, cancel_step() for a skipped one.
  // previous_apply: the apply flag of the step before, where its values are not read yet (the trainer reads step N
  // after step N+1 is queued): this update's step count is one less where that flag turns out 0, and the update
  // takes its bias corrections from the flag on the device; that step's cancel_step() comes after this call.
  virtual bool device_step_available() const { return false; }
  virtual torch::Tensor grad_norm_tensor() const;  // FP64 0-dim
  virtual void step_on_device(double lr, const torch::Tensor& grad_scale, const torch::Tensor& apply,
                              const torch::Tensor& previous_apply = {});
  virtual void cancel_step();  // steps() back by one: the step_on_device it answers changed nothing
};

// Global L2 norm of the tensors' gradients (square_sum_f64 per tensor; missing gradients count as 0). One host
// synchronisation. AdamW::grad_norm and OffloadAdamW::grad_norm.
double global_grad_norm(const std::vector<torch::Tensor>& params);

// The sum of g's squares as an FP64 0-dim tensor on g's device. On the CPU every square (exact in FP64) is added
// in FP64, so the sum hardly depends on how the gradients are cut (per tensor, flat shards of any rank count):
// the clipping factor of every layout rounds to the same FP32 value and the layouts stay bit for bit together
// (docs/dist.md, "Layout-invariant training"). On CUDA: FP32 squares and sum, then FP64 (no FP64 temporary).
torch::Tensor square_sum_f64(const torch::Tensor& g);

// The optimizer of one process (or of every rank without ZeRO-1) for `options`: AdamW, or with options.offload
// "optimizer" OffloadAdamW (train/offload_adamw.h: master weights and moments in host memory).
std::unique_ptr<Optimizer> make_adamw(NamedTensors params, const OptimConfig& options);

// A checkpoint's optimizer state by name, as every implementation's load_state reads it: at(key, shape) is the
// tensor, or an error naming the missing key or the shape mismatch.
class StateByName {
 public:
  explicit StateByName(const NamedTensors& state) : by_name_(state.begin(), state.end()) {}
  const torch::Tensor& at(const std::string& key, at::IntArrayRef shape) const;

 private:
  std::map<std::string, torch::Tensor> by_name_;
};

// PyTorch's AdamW update of one tensor's master weights and moments at step t (weight decay is applied by
// the caller, before): shared by AdamW and ShardedAdamW so both do bit-identical arithmetic.
void adam_update_(torch::Tensor& master, torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq, const torch::Tensor& g,
                  double lr, const OptimConfig& o, int64_t t);

class AdamW : public Optimizer {
 public:
  // params: the trainable tensors by name (the model's hf_tensors()); they get requires_grad.
  AdamW(NamedTensors params, const OptimConfig& options);

  // Global L2 norm of all gradients (FP32 per tensor, summed in FP64); missing gradients count as 0.
  // One host synchronisation.
  double grad_norm() const override;
  // Multiplies every gradient by `factor` (clipping).
  void scale_grads(double factor) override;
  // One update with learning rate `lr` from the current gradients; increments steps().
  void step(double lr) override;
  void zero_grad() override;

  int64_t steps() const override { return t_; }
  const NamedTensors& params() const { return params_; }

  // The fused multi-tensor update (train/fused_adamw.h): on by default where every parameter is on a CUDA device
  // and the kernels are built; tests switch it on for CPU tensors, where it runs the C++ reference.
  void set_fused(bool on);
  bool fused() const { return fused_; }
  bool device_step_available() const override { return fused_; }
  torch::Tensor grad_norm_tensor() const override;
  void step_on_device(double lr, const torch::Tensor& grad_scale, const torch::Tensor& apply,
                      const torch::Tensor& previous_apply = {}) override;
  void cancel_step() override { --t_; }

  // "master.<name>" (only where the model is not FP32), "exp_avg.<name>", "exp_avg_sq.<name>".
  NamedTensors state() const override;
  // Restores moments, master weights (and rounds them into the model) and the step count; throws naming the
  // first tensor that is missing or has another shape.
  void load_state(const NamedTensors& state, int64_t steps) override;

 private:
  struct Slot {
    std::string name;
    torch::Tensor param, master, exp_avg, exp_avg_sq;  // master aliases param when the param is FP32
    bool decay = false;
  };
  NamedTensors params_;
  std::vector<Slot> slots_;
  OptimConfig options_;
  int64_t t_ = 0;
  bool fused_ = false;
};

}  // namespace qad::train
