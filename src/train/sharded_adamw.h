// ZeRO-1 AdamW: the FP32 master weights and both moments are sharded over the data-parallel ranks. Each rank
// owns one contiguous 1/N of the flat parameter layout (dist/flat_layout.h), reads its slice of the
// all-reduced gradient buffer, updates it with the same arithmetic as AdamW (adam_update_), writes the
// result in the compute dtype back into its slice and all-gathers the whole buffer into the parameters. The
// gradient norm is an all-reduce of the shards' sums of squares. state() gathers AdamW-named tensors on rank
// 0, so checkpoints are the same as a one-process run's and resume on any number of ranks.
#pragma once
#include <torch/torch.h>

#include "dist/communicator.h"
#include "dist/grad_reducer.h"
#include "train/optimizer.h"

namespace qad::train {

class ShardedAdamW : public Optimizer {
 public:
  // params: the same tensors (same order) the reducer was built from.
  ShardedAdamW(NamedTensors params, const OptimConfig& options, dist::Communicator& comm, dist::GradReducer& reducer);

  double grad_norm() const override;
  void scale_grads(double factor) override;
  void step(double lr) override;
  void zero_grad() override;
  int64_t steps() const override { return t_; }
  NamedTensors state() const override;
  void load_state(const NamedTensors& state, int64_t steps) override;

  dist::Range shard() const { return shard_; }
  int64_t state_bytes() const;  // this rank's master + moments

 private:
  torch::Tensor grad_shard() const;

  NamedTensors params_;
  OptimConfig options_;
  dist::Communicator& comm_;
  dist::GradReducer& reducer_;
  dist::Range shard_;
  std::vector<dist::Piece> pieces_;  // the parameters' pieces in this shard
  std::vector<bool> low_;            // per parameter: BF16/FP16 (AdamW keeps a separate master)
  torch::Tensor master_, exp_avg_, exp_avg_sq_;  // [shard size], FP32 (FP64 for FP64 models)
  int64_t t_ = 0;
};

}  // namespace qad::train
