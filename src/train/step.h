// One training step: the teacher's forward (no gradient), the student's forward, the weighted loss
// (KL + CE + CKA term), backward over k micro-batches, the gradient reduction, the non-finite check,
// clipping and the AdamW update.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/batch_tensors.h"
#include "model/causal_lm.h"
#include "train/config.h"
#include "train/optimizer.h"
#include "train/pending_read.h"

namespace qad::train {

class DataParallel;

// Loss values of one batch (or the token-weighted mean over the micro-batches of a step).
struct LossValues {
  double loss = 0;                 // what was minimised
  std::optional<double> kl, ce;    // nats per token; unset where not computed
  std::optional<double> cka_term;  // mean over layers of (1 - CKA), before lambda
  std::optional<double> router_balance;  // MoE load-balancing loss, before its weight (when on)
  std::vector<std::pair<std::string, double>> cka;  // per layer
  int64_t tokens = 0;              // loss tokens (mask != 0)
};

struct LossParts {
  torch::Tensor total;  // 0-dim, differentiable in the student's parameters
  LossValues values;
};

// LossValues while they are still on the device: FP64 0-dim tensors (undefined where not computed) and the
// per-layer CKA [layers]. read_values brings them (and any `extra` 0-dim tensors) to the host in one transfer.
struct DeviceLossValues {
  torch::Tensor loss, kl, ce, cka_term, router_balance, tokens, cka;
  std::vector<std::string> cka_layers;
};
LossValues read_values(const DeviceLossValues& v, const std::vector<torch::Tensor>& extra = {},
                       std::vector<double>* extra_out = nullptr);

// Teacher may be null when no term needs it (QAT, pretrain). `gen` draws the CKA subsample.
// The batch's attention_mask is passed to the models only when it has padding.
LossParts compute_losses(model::CausalLM& student, model::CausalLM* teacher, const data::BatchTensors& batch,
                         const LossConfig& loss, bool activation_checkpointing, torch::Generator* gen);

struct StepOptions {
  double lr = 0;
  const TrainConfig* config = nullptr;
  uint64_t rng_seed = 0;   // the step's generator seed (the CKA subsample of micro-batch i uses rng_seed + i)
  bool inject_nan = false; // test hook: poison this step's loss
  DataParallel* parallel = nullptr;  // data parallel over several ranks; null for one process
  // Called once the whole step is queued, just before its one read waits for the device (one process, device-side
  // step only): bench_train times the host's share of the step with it.
  std::function<void()> on_queued;
};

struct StepResult {
  LossValues values;
  double grad_norm = 0;     // before clipping
  bool skipped = false;     // non-finite loss or gradient: no update was made
};

// Forward and backward of the k micro-batches into the parameters' .grad (accumulated; zero them first), each
// micro-batch's loss weighted by its share of the step's loss tokens. Returns the weighted loss values.
// Data parallel: `global_tokens` (> 0) is the step's loss tokens over all ranks, the denominator of the weights
// (so that the sum over ranks is the global batch's gradient), and `before_last_backward` runs before the last
// micro-batch's backward (the gradient buckets' all-reduce overlaps it). The returned values stay weighted by
// this rank's own tokens. Micro-batch i's randomness (the CKA subsample) is stream rng_seed + i * seed_stride: data
// parallel passes rng_seed + rank and stride W, so that every micro-batch of a step draws from its index in the
// global batch's row order (i * W + rank), whatever the split into ranks and micro-batches.
LossValues accumulate_gradients(model::CausalLM& student, model::CausalLM* teacher,
                                const std::vector<data::BatchTensors>& micro_batches, const TrainConfig& config,
                                uint64_t rng_seed, bool inject_nan = false, int64_t global_tokens = 0,
                                const std::function<void()>& before_last_backward = nullptr, uint64_t seed_stride = 1);

// accumulate_gradients without reading the values (no host synchronisation; batches without host facts,
// data::HostFacts, are read for their padding and labels at the start).
DeviceLossValues accumulate_gradients_on_device(model::CausalLM& student, model::CausalLM* teacher,
                                                const std::vector<data::BatchTensors>& micro_batches,
                                                const TrainConfig& config, uint64_t rng_seed, bool inject_nan = false,
                                                int64_t global_tokens = 0,
                                                const std::function<void()>& before_last_backward = nullptr,
                                                uint64_t seed_stride = 1);

// micro_batches: the k micro-batches of this optimizer step (already on the device). Each micro-batch's loss
// is weighted by its share of the step's loss tokens, so k micro-batches give the same KL / CE gradient as
// one batch holding all of them (the CKA term is computed per micro-batch: minibatch CKA).
// Where the optimizer has a device-side step (AdamW on CUDA) and there is one process, nothing in the step waits
// for the device: the loss parts, token counts, gradient norm, clipping factor and the non-finite skip stay on
// the device, and the values are read once, after the whole step is queued. Padding and the CE label range come
// from the batches' host facts (data::HostFacts); the exceptions: batches without them (read from the device
// before any of the step's work is queued) and CKA dynamic balancing (which needs the KL's value).
StepResult train_step(model::CausalLM& student, model::CausalLM* teacher,
                      const std::vector<data::BatchTensors>& micro_batches, Optimizer& optimizer, const StepOptions& o);

// A step whose work is queued and whose values are not read yet. On one process with a device-side step, the
// trainer queues step N+1 before it reads step N (queue_train_step with `previous` = step N, then read_train_step of
// step N), so that the host queues step N+1 while the device still runs step N, and the device does not wait for the
// host between steps (it still does where a step reads the device mid-way: a MoE dispatch's counts, CKA dynamic
// balancing, a batch without host facts). Exact: step N+1's AdamW update takes its step count from step N's skip
// flag on the device (Optimizer::step_on_device's previous_apply), and reading a skipped step N gives its count back
// as train_step does. At most one step is unread when another is queued. Anything that looks at the weights
// (validation, a checkpoint) must come after the last queued step is read.
class QueuedStep {
 public:
  QueuedStep() = default;
  QueuedStep(QueuedStep&&) = default;
  QueuedStep& operator=(QueuedStep&&) = default;
  QueuedStep(const QueuedStep&) = delete;  // one owner: a copy could give a skipped step's count back twice
  QueuedStep& operator=(const QueuedStep&) = delete;
  bool read() const { return result_.has_value(); }

 private:
  friend QueuedStep queue_train_step(model::CausalLM&, model::CausalLM*, const std::vector<data::BatchTensors>&,
                                     Optimizer&, const StepOptions&, const QueuedStep*);
  friend StepResult read_train_step(QueuedStep&, Optimizer&);
  DeviceLossValues values_;
  torch::Tensor apply_;                // FP32 0-dim on the device: 1 where the update was applied
  PendingRead read_;                   // the values, the gradient norm and apply, on their way to the host
  std::optional<StepResult> result_;   // once read (at once where the step could not be queued without a read)
  // At most one step may be unread when another is queued (PreviousStep covers one): whether the step this one was
  // queued after has been read (null where it was read already), and this one's own flag for the step after it.
  std::shared_ptr<const bool> before_read_;
  std::shared_ptr<bool> was_read_ = std::make_shared<bool>(false);
};

// train_step's work without its read. `previous`: the step queued before this one, or null. Steps that have to read
// the device (data parallel, an optimizer without a device-side step) run whole here, after `previous` was read.
QueuedStep queue_train_step(model::CausalLM& student, model::CausalLM* teacher,
                            const std::vector<data::BatchTensors>& micro_batches, Optimizer& optimizer,
                            const StepOptions& o, const QueuedStep* previous = nullptr);
// Waits for the step's values and returns them (again on later calls); a skipped step's count is given back.
StepResult read_train_step(QueuedStep& q, Optimizer& optimizer);

// Names of the decoder-layer outputs ("layers.0" … ) the CKA term uses by default.
std::vector<std::string> default_cka_layers(const model::ModelConfig& c);

}  // namespace qad::train
