// AdamW over a fully sharded student (train/fully_sharded.h): per unit, this rank's FP32 master weights and
// both moments of its shard, updated from the unit's reduce-scattered gradient shard with AdamW's arithmetic
// (adam_update_, so sharded = unsharded elementwise); the result is rounded into the unit's compute-dtype shard,
// from which the layers are gathered. The gradient norm is an all-reduce of the shards' sums of squares.
// state() gathers AdamW-named tensors on rank 0 (as ShardedAdamW does), so a checkpoint is the one a one-process
// run writes and resumes on any number of ranks. Unlike AdamW, a parameter without a gradient in a step (an
// expert no token reached) still gets the update of a zero gradient (as with ZeRO-1).
#pragma once
#include <torch/torch.h>

#include <memory>

#include "train/fully_sharded.h"
#include "train/optimizer.h"

namespace qad::train {

class FsdpAdamW : public Optimizer {
 public:
  FsdpAdamW(std::shared_ptr<ShardedModel> model, const OptimConfig& options);

  double grad_norm() const override;
  void scale_grads(double factor) override;
  void step(double lr) override;
  void zero_grad() override;
  int64_t steps() const override { return t_; }
  NamedTensors state() const override;
  // Reads the model's parameters for FP32 models (their own masters): call it with the model gathered
  // (ShardedModel::gather_all) after loading the checkpoint's weights.
  void load_state(const NamedTensors& state, int64_t steps) override;

  int64_t state_bytes() const;  // this rank's master + moments

 private:
  struct Shard {
    torch::Tensor master, exp_avg, exp_avg_sq;  // [unit shard], FP32 (FP64 for FP64 models)
  };
  std::shared_ptr<ShardedModel> model_;
  OptimConfig options_;
  std::vector<Shard> shards_;  // per unit
  bool low_ = false;           // BF16/FP16 model: the checkpoint carries master.* tensors
  int64_t t_ = 0;
};

}  // namespace qad::train
