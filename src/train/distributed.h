// The data-parallel seam of the trainer: with world_size 1 there is no DataParallel object and nothing here
// runs (the single-process path is unchanged). With more ranks, DataParallel owns the communicator
// (dist/communicator.h), the overlapped bucketed gradient all-reduce (dist/grad_reducer.h) and builds the
// optimizer (ZeRO-1 ShardedAdamW, or AdamW on every rank); train_step calls it around the backward passes.
// Fully sharded (--zero 3): the student and the teacher are ShardedModels (train/fully_sharded.h) instead, the
// optimizer FsdpAdamW, and the gradients are reduce-scattered layer by layer inside the backward. docs/dist.md.
#pragma once
#include <torch/torch.h>

#include <memory>

#include "dist/communicator.h"
#include "dist/grad_reducer.h"
#include "model/causal_lm.h"
#include "train/config.h"
#include "train/optimizer.h"

namespace qad::train {

struct LossValues;
class ShardedModel;

// Only rank 0 writes checkpoints, metrics and exports.
inline bool is_writer(const DistConfig& dist) { return dist.rank == 0; }

class DataParallel {
 public:
  // Joins the other ranks (rendezvous at dist.master_addr:master_port within dist.timeout_s).
  DataParallel(const DistConfig& dist, torch::Device device);
  ~DataParallel();

  // The trained parameters (once, before the first step) and the optimizer over them. Fully sharded: the
  // student (whose trained parameters `params` are) and the teacher (may be null) are sharded here.
  std::unique_ptr<Optimizer> make_optimizer(const NamedTensors& params, const OptimConfig& options,
                                            model::CausalLM* student = nullptr, model::CausalLM* teacher = nullptr);

  // Fully sharded: the student's parameters whole on every rank while this lives (code that reads or writes
  // whole tensors: validation, checkpoints, exports, loading a checkpoint's weights); on release each rank takes
  // its shards back from them. Null when not fully sharded. A collective: every rank makes it.
  class FullParameters {
   public:
    explicit FullParameters(std::shared_ptr<ShardedModel> m);
    ~FullParameters();
    FullParameters(const FullParameters&) = delete;
    FullParameters& operator=(const FullParameters&) = delete;

   private:
    std::shared_ptr<ShardedModel> model_;
  };
  std::unique_ptr<FullParameters> full_parameters();
  bool fully_sharded() const { return dist_.fully_sharded; }

  int rank() const { return dist_.rank; }
  int64_t sum_tokens(int64_t local);                      // loss tokens of this step over all ranks
  void begin_step();                                      // gradients become views of the bucket buffer
  void before_last_backward();                            // buckets go out as their gradients complete
  void finish_gradients();                                // ... and are all waited for
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
  std::shared_ptr<ShardedModel> student_shards_, teacher_shards_;  // fully sharded
};

}  // namespace qad::train
