// AdamW with the FP32 master weights and both moments offloaded to host memory (`--offload optimizer`), for one
// GPU too small for 12 bytes of optimizer state per parameter (an 8B model: 98 GB). The GPU keeps the BF16
// weights and BF16 gradients. Each update streams the state through a few device slots in chunks: a side stream
// copies chunk k+1 from pinned host memory to a free slot while the fused AdamW kernel (train/fused_adamw.h)
// updates chunk k and writes the BF16 weights, and another stream copies chunk k-1 back; so the update costs
// about one pass of 12 bytes/parameter each way over the host link, both directions at once. Same kernel, same
// scalars, same per-element arithmetic as AdamW's fused update: the results are bit-identical to AdamW
// (tests/train/offload_adamw_test.cc on the CPU, offload_adamw_cuda_test.cc on the GPU). docs/train.md, "Offload".
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "train/optimizer.h"

namespace qad::train {

class OffloadAdamW : public Optimizer {
 public:
  struct Staging {
    int64_t chunk_elements = int64_t{1} << 24;  // per chunk and slot: 16 M elements = 192 MB of FP32 state
    int slots = 3;                              // H2D, update and D2H of three chunks in flight
  };
  // params: BF16 or FP32 tensors on one device (CUDA; or the CPU, where the "host" state is a second copy and the
  // update runs the kernel's C++ reference: a test vehicle). They get requires_grad.
  OffloadAdamW(NamedTensors params, const OptimConfig& options, Staging staging);
  OffloadAdamW(NamedTensors params, const OptimConfig& options) : OffloadAdamW(std::move(params), options, Staging{}) {}
  ~OffloadAdamW() override;

  double grad_norm() const override;
  void scale_grads(double factor) override;
  void step(double lr) override;  // step_on_device with scale 1, applied
  void zero_grad() override;
  int64_t steps() const override { return t_; }
  bool device_step_available() const override { return true; }
  torch::Tensor grad_norm_tensor() const override;
  void step_on_device(double lr, const torch::Tensor& grad_scale, const torch::Tensor& apply,
                      const torch::Tensor& previous_apply = {}) override;
  void cancel_step() override { --t_; }
  // AdamW's names ("master.<name>" where the model is not FP32, "exp_avg.<name>", "exp_avg_sq.<name>") as views of
  // the host state, after the last update's copies have landed; valid until the next step.
  NamedTensors state() const override;
  void load_state(const NamedTensors& state, int64_t steps) override;

  int64_t host_bytes() const;    // master + moments in host memory
  int64_t device_bytes() const;  // the staging slots on the device
  std::string describe() const;  // one line for the log
  // GPU time of the last update (fetches, kernels, stores), waiting for it to end; 0 on the CPU.
  double last_update_ms() const;

 private:
  struct Param {
    std::string name;
    torch::Tensor param;  // the model's tensor
    int64_t offset = 0;   // in the flat host state
    bool low = false;     // BF16: the kernel writes the model copy; FP32: copied from the updated master
    bool decay = false;
  };
  struct Streams;  // the CUDA side (copy streams and events); null on the CPU
  void wait_for_copies() const;  // the host waits until the state in host memory is current

  std::vector<Param> params_;
  OptimConfig options_;
  Staging staging_;
  torch::Device device_{torch::kCPU};
  int64_t total_ = 0;
  torch::Tensor master_, exp_avg_, exp_avg_sq_;  // host, FP32 [total_]
  std::vector<torch::Tensor> slots_;             // device, FP32 [3, chunk] each: master | exp_avg | exp_avg_sq
  std::unique_ptr<Streams> streams_;
  int64_t t_ = 0;
};

}  // namespace qad::train
