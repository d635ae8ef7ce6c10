// The data-parallel seam of the trainer: with world_size 1 there is no DataParallel object and nothing here
// runs (the single-process path is unchanged). With more ranks, DataParallel owns the communicator
// (dist/communicator.h), the overlapped bucketed gradient all-reduce (dist/grad_reducer.h) and builds the
// optimizer (ZeRO-1 ShardedAdamW, or AdamW on every rank); train_step calls it around the backward passes.
// docs/dist.md.
#pragma once
#include <torch/torch.h>

#include <memory>

#include "dist/communicator.h"
#include "dist/grad_reducer.h"
#include "train/config.h"
#include "train/optimizer.h"

namespace qad::train {

struct LossValues;

// Only rank 0 writes checkpoints, metrics and exports.
inline bool is_writer(const DistConfig& dist) { return dist.rank == 0; }

class DataParallel {
 public:
  // Joins the other ranks (rendezvous at dist.master_addr:master_port within dist.timeout_s).
  DataParallel(const DistConfig& dist, torch::Device device);
  ~DataParallel();

  // The trained parameters (once, before the first step) and the optimizer over them.
  std::unique_ptr<Optimizer> make_optimizer(const NamedTensors& params, const OptimConfig& options);

  int64_t sum_tokens(int64_t local);                      // loss tokens of this step over all ranks
  void begin_step();                                      // gradients become views of the bucket buffer
  void before_last_backward() { reducer_->arm(); }        // buckets go out as their gradients complete
  void finish_gradients() { reducer_->finish(); }         // ... and are all waited for
  // Loss values weighted by this rank's share of the global tokens, summed over the ranks (so they equal
  // a one-process run of the same global batch); tokens become the global count.
  LossValues reduce_values(const LossValues& local, int64_t global_tokens);
  double max_over_ranks(double v);
  void barrier(const std::string& what) { comm_->barrier(what); }

  dist::Communicator& comm() { return *comm_; }
  const DistConfig& config() const { return dist_; }

 private:
  DistConfig dist_;
  std::unique_ptr<dist::Communicator> comm_;
  std::unique_ptr<dist::GradReducer> reducer_;
};

}  // namespace qad::train
