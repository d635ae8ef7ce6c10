// The training step (see step.h).
#include "train/step.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

#include "loss/cka_loss.h"
#include "loss/fused_head_losses.h"
#include "loss/logit_losses.h"
#include "loss/teacher_targets.h"
#include "train/distributed.h"
#include "train/moe_training.h"
#include "train/pending_read.h"
#include "train/step_marks.h"
#include "util/error.h"

namespace qad::train {
namespace {

torch::Tensor f64(const torch::Tensor& t) { return t.detach().to(torch::kFloat64); }

// a + w * b on device tensors, where a may be undefined (0) and w is a 0-dim tensor or undefined (1).
torch::Tensor add_weighted(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& w) {
  if (!b.defined()) return a;
  auto wb = w.defined() ? b * w : b;
  return a.defined() ? a + wb : wb;
}

// Labels outside [0, V) where the loss reads them: checked before the step's work is queued (cross_entropy then
// skips its own check, which would wait for the device in the middle of the step). A batch from to_tensors shows its
// label range on the host; the device is read only when it does not (or shows a label outside, for the message).
void check_labels(const data::BatchTensors& b, int64_t vocab) {
  if (data::labels_known_in_range(b, vocab)) return;
  auto bad = data::labels_read(b.targets, b.loss_mask).logical_and(b.targets.lt(0).logical_or(b.targets.ge(vocab)));
  if (bad.any().item<bool>()) {
    const int64_t i = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
    fail("cross_entropy: label {} at token {} (flattened) is outside the vocabulary [0, {}); use -100 to ignore a "
         "token", b.targets.reshape({-1})[i].item<int64_t>(), i, vocab);
  }
}

// Whether the loss takes the final hidden states (lm_head + KL/CE fused over token chunks) instead of the logits.
bool use_fused_head(const LossConfig& loss, model::CausalLM& student, model::CausalLM* teacher) {
  if (loss.fused_head == 0) return false;
  if (loss.kl > 0 && loss.top_k > 0) return false;  // the top-k KL keeps the logits path
  if (student->lm_head->bias.defined()) return false;
  if (teacher != nullptr) {
    const auto& th = (*teacher)->lm_head;
    if (th->bias.defined() || th->weight.size(0) != student->lm_head->weight.size(0)) return false;
  }
  return loss.fused_head == 1 || student->lm_head->weight.is_cuda();
}

// The lm_head's effective input and weight (its NVFP4 hook's fake quantization included, where it has one).
std::pair<torch::Tensor, torch::Tensor> head_operands(model::CausalLM& lm, const torch::Tensor& hidden) {
  const auto& head = lm->lm_head;
  if (head->quant) return {head->quant->input(hidden), head->quant->weight(head->weight)};
  return {hidden, head->weight};
}

struct DeviceParts {
  torch::Tensor total;
  DeviceLossValues values;
};

DeviceParts compute_losses_on_device(model::CausalLM& student, model::CausalLM* teacher, const data::BatchTensors& batch,
                                     const LossConfig& loss, bool activation_checkpointing, torch::Generator* gen,
                                     bool padded, bool labels_checked) {
  const bool want_cka = loss.cka > 0;
  // From a teacher cache: the teacher's top-k logits and CKA rows come with the batch; no teacher forward.
  const loss::TeacherTargets* cached = batch.teacher.get();
  const bool need_teacher = (loss.kl > 0 || want_cka) && cached == nullptr;
  QAD_CHECK(!need_teacher || teacher != nullptr, "the KL and CKA terms need a teacher model (or a teacher cache)");
  QAD_CHECK(cached == nullptr || !want_cka || cached->cka_index.defined(),
            "the CKA term is on but the teacher cache holds no hidden states; build it with the CKA settings");
  model::ForwardOptions fo;
  fo.return_hidden = want_cka;
  if (padded) fo.attention_mask = batch.attention_mask;
  loss::CkaLossOptions co;
  if (want_cka) {
    co.weight = loss.cka;
    co.estimator = loss.cka_estimator == "debiased" ? loss::CkaEstimator::kDebiased : loss::CkaEstimator::kBiased;
    co.subsample_tokens = loss.cka_subsample_tokens;
    co.dynamic_balance = loss.cka_dynamic_balance;
    co.read_values = loss.cka_dynamic_balance;  // balancing reads the values anyway
    co.bf16_products = loss.cka_bf16_products;
    co.layers = loss.cka_layers.empty() ? default_cka_layers(student->config()) : loss.cka_layers;
    // CKA over the real input tokens (prompt and answer alike), not only the supervised ones. Chosen before the
    // forwards so that both models keep only these rows of each layer's output.
    const auto& ids = batch.input_ids;
    // (The lm_head's device, not parameters().front()'s: collecting every parameter of the model is host work
    // the GPU waits for here, at the start of the step.) A teacher cache fixed the tokens when it was built.
    if (cached != nullptr) {
      fo.hidden_rows = cached->cka_index;
    } else {
      // Chosen once the teacher's first layer is queued (ForwardOptions::hidden_rows_source).
      fo.hidden_rows_source = [&, device = student->lm_head->weight.device()] {
        auto chosen = loss::select_cka_tokens(fo.attention_mask, ids.size(0), ids.size(1), co, gen, device);
        return model::ChosenRows{chosen.index, chosen.slots};
      };
    }
  }

  const bool fused = cached == nullptr && use_fused_head(loss, student, teacher);  // a cache: the top-k KL path
  fo.skip_logits = fused;
  model::ForwardOutput t_out;
  if (need_teacher) {
    torch::NoGradGuard ng;
    step_mark(kMarkTeacherForward);
    t_out = (*teacher)->forward(batch.input_ids, fo);
  }
  model::ForwardOptions so = fo;
  if (fo.hidden_rows_source) {
    so.hidden_rows = t_out.hidden_rows;  // the teacher's rows (undefined: every token): the same in both models
    so.hidden_row_slots = t_out.hidden_row_slots;  // and their slot map (a shape the teacher's map does not fit
                                                   // is built again)
    so.hidden_rows_source = nullptr;
  }
  so.checkpoint_layers = activation_checkpointing;
  so.return_router_logits = loss.router_balance > 0;
  step_mark(kMarkStudentForward);
  auto s_out = student->forward(batch.input_ids, so);
  step_mark(kMarkLoss);

  DeviceParts p;
  auto& v = p.values;
  v.tokens = f64(batch.loss_mask.sum());
  // The loss is summed in FP32 (FP64 for FP64 models, which the tests use).
  const auto model_dtype = student->lm_head->weight.scalar_type();
  const auto acc = model_dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  torch::Tensor total = torch::zeros({}, torch::TensorOptions().dtype(acc).device(student->lm_head->weight.device()));
  if (fused) {
    loss::HeadLossOptions ho{.kl_weight = loss.kl, .ce_weight = loss.ce, .ce_value = loss.log_ce,
                             .temperature = loss.temperature,
                             .chunk_tokens = std::min<int64_t>(loss.chunk_tokens, 2048)};
    auto [hs, ws] = head_operands(student, s_out.final_hidden);
    torch::Tensor ht, wt;
    if (loss.kl > 0) {
      torch::NoGradGuard ng;
      std::tie(ht, wt) = head_operands(*teacher, t_out.final_hidden);
    }
    auto r = loss::fused_head_losses(hs, ws, ht, wt, batch.targets, batch.loss_mask, ho);
    if (r.kl.defined()) v.kl = f64(r.kl);
    if (r.ce.defined()) v.ce = f64(r.ce);
    total = total + r.loss.to(acc);
    t_out.final_hidden = torch::Tensor();  // the teacher's part of the loss is done: free it before the backward
  } else {
    torch::Tensor kl;
    if (loss.kl > 0) {
      loss::KLOptions ko{.temperature = loss.temperature, .top_k = loss.top_k, .top_k_tail = loss.top_k_tail,
                         .chunk_tokens = loss.chunk_tokens};
      kl = cached != nullptr ? loss::kl_divergence_top_k(s_out.logits, cached->top_logits, cached->top_ids,
                                                         batch.loss_mask, ko, cached->lse)
                             : loss::kl_divergence(s_out.logits, t_out.logits, batch.loss_mask, ko);
      v.kl = f64(kl);
      total = total + loss.kl * kl.to(acc);
    }
    t_out.logits = torch::Tensor();  // the teacher's logits are done with: free them before the backward
    if (loss.ce > 0) {
      auto ce = loss::cross_entropy(s_out.logits, batch.targets, batch.loss_mask, loss.chunk_tokens, -100,
                                    !labels_checked);
      v.ce = f64(ce);
      total = total + loss.ce * ce.to(acc);
    } else if (loss.log_ce) {
      torch::NoGradGuard ng;
      v.ce = f64(loss::cross_entropy(s_out.logits.detach(), batch.targets, batch.loss_mask, loss.chunk_tokens, -100,
                                     !labels_checked));
    }
  }
  if (want_cka) {
    std::optional<double> kl_value;
    if (co.dynamic_balance) kl_value = v.kl.defined() ? v.kl.item<double>() : 0.0;
    loss::NamedHidden t_hidden;
    if (cached != nullptr) {  // cached rows in the student's dtype (a cache may store them narrower)
      for (const auto& [name, rows] : cached->cka_hidden) t_hidden.emplace_back(name, rows.to(model_dtype));
    }
    co.scratch_rows = s_out.hidden_scratch_rows;  // the student's rows: the side the CKA backward writes to
    auto r = loss::cka_loss_on_tokens(cached != nullptr ? t_hidden : t_out.hidden, s_out.hidden, co, kl_value);
    v.cka = r.per_layer;
    v.cka_layers = r.layers;
    v.cka_term = r.term;
    total = total + r.loss.to(acc);
  }
  if (loss.router_balance > 0) {
    auto balance = router_balance_loss(student, s_out);
    v.router_balance = f64(balance);
    total = total + loss.router_balance * balance.to(acc);
  }
  v.loss = f64(total);
  p.total = total;
  return p;
}

}  // namespace

std::vector<std::string> default_cka_layers(const model::ModelConfig& c) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < c.num_layers; ++i) out.push_back(fmt::format("layers.{}", i));
  return out;
}

namespace {

// Every defined value and then `extra`, flattened into one FP64 vector on the values' device (one transfer).
torch::Tensor flatten_values(const DeviceLossValues& v, const std::vector<torch::Tensor>& extra) {
  std::vector<torch::Tensor> parts;
  torch::Device device = torch::kCPU;
  for (const auto* t : {&v.loss, &v.kl, &v.ce, &v.cka_term, &v.router_balance, &v.tokens, &v.cka}) {
    if (t->defined()) device = t->device();
  }
  auto flat = [&](const torch::Tensor& t) { return t.detach().to(device, torch::kFloat64).reshape({-1}); };
  for (const auto* t : {&v.loss, &v.kl, &v.ce, &v.cka_term, &v.router_balance, &v.tokens, &v.cka}) {
    if (t->defined()) parts.push_back(flat(*t));
  }
  for (const auto& t : extra) parts.push_back(flat(t));
  return parts.empty() ? torch::Tensor() : torch::cat(parts);
}

// flatten_values' layout read back from its host copy `h` (n_extra values after the loss values).
LossValues parse_values(const DeviceLossValues& v, const double* h, size_t n_extra, std::vector<double>* extra_out) {
  LossValues out;
  int64_t i = 0;
  if (v.loss.defined()) out.loss = h[i++];
  if (v.kl.defined()) out.kl = h[i++];
  if (v.ce.defined()) out.ce = h[i++];
  if (v.cka_term.defined()) out.cka_term = h[i++];
  if (v.router_balance.defined()) out.router_balance = h[i++];
  if (v.tokens.defined()) out.tokens = static_cast<int64_t>(std::llround(h[i++]));
  if (v.cka.defined()) {
    for (int64_t l = 0; l < v.cka.numel(); ++l) {
      out.cka.emplace_back(static_cast<size_t>(l) < v.cka_layers.size() ? v.cka_layers[static_cast<size_t>(l)]
                                                                      : fmt::format("layers.{}", l),
                           h[i++]);
    }
  }
  if (extra_out != nullptr) {
    extra_out->clear();
    for (size_t e = 0; e < n_extra; ++e) extra_out->push_back(h[i++]);
  }
  return out;
}

}  // namespace

LossValues read_values(const DeviceLossValues& v, const std::vector<torch::Tensor>& extra,
                       std::vector<double>* extra_out) {
  const auto flat = flatten_values(v, extra);
  if (!flat.defined()) return {};
  const auto host = flat.to(torch::kCPU);
  return parse_values(v, host.data_ptr<double>(), extra.size(), extra_out);
}

LossParts compute_losses(model::CausalLM& student, model::CausalLM* teacher, const data::BatchTensors& batch,
                         const LossConfig& loss, bool activation_checkpointing, torch::Generator* gen) {
  if (loss.ce > 0 || loss.log_ce) check_labels(batch, student->config().vocab_size);
  auto p = compute_losses_on_device(student, teacher, batch, loss, activation_checkpointing, gen,
                                    data::has_padding(batch), /*labels_checked=*/true);
  return {p.total, read_values(p.values)};
}

DeviceLossValues accumulate_gradients_on_device(model::CausalLM& student, model::CausalLM* teacher,
                                                const std::vector<data::BatchTensors>& micro_batches,
                                                const TrainConfig& c, uint64_t rng_seed, bool inject_nan,
                                                int64_t global_tokens, const std::function<void()>& before_last_backward,
                                                uint64_t seed_stride) {
  // The step's host decisions happen here, before any of its work is queued: which batches have padding (the
  // attention path depends on it) and, where CE is computed, whether every label is in the vocabulary. Batches from
  // to_tensors answer both from their host facts; others are read from the device.
  const bool ce_read = c.loss.ce > 0 || c.loss.log_ce;
  std::vector<bool> padded;
  for (const auto& b : micro_batches) {
    padded.push_back(data::has_padding(b));
    if (ce_read) check_labels(b, student->config().vocab_size);
  }
  const size_t n = micro_batches.size();
  std::vector<torch::Tensor> tokens;
  torch::Tensor total_tokens;
  for (const auto& b : micro_batches) {
    tokens.push_back(f64(b.loss_mask.sum()));
    total_tokens = total_tokens.defined() ? total_tokens + tokens.back() : tokens.back();
  }
  const auto denom = total_tokens.clamp_min(1.0);
  const bool parallel = global_tokens > 0;
  const double global_denom = static_cast<double>(std::max<int64_t>(global_tokens, 1));
  const double poison = inject_nan ? std::numeric_limits<double>::quiet_NaN() : 1.0;
  DeviceLossValues acc;
  for (size_t i = 0; i < n; ++i) {
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(rng_seed + i * seed_stride);
    auto parts = compute_losses_on_device(student, teacher, micro_batches[i], c.loss, c.run.activation_checkpointing,
                                          &gen, padded[i], ce_read);
    // The micro-batch's share of the step's tokens (1 for one micro-batch); data parallel: of the global tokens.
    torch::Tensor w = n == 1 ? torch::Tensor() : tokens[i] / denom;
    torch::Tensor gw = parallel ? tokens[i] / global_denom : w;
    if (before_last_backward && i + 1 == n) before_last_backward();
    auto scaled = parts.total * poison;
    if (gw.defined()) scaled = scaled * gw.to(scaled.scalar_type());
    step_mark(kMarkBackward);
    scaled.backward();
    const auto& pv = parts.values;
    acc.loss = add_weighted(acc.loss, pv.loss * poison, w);
    acc.kl = add_weighted(acc.kl, pv.kl, w);
    acc.ce = add_weighted(acc.ce, pv.ce, w);
    acc.cka_term = add_weighted(acc.cka_term, pv.cka_term, w);
    acc.router_balance = add_weighted(acc.router_balance, pv.router_balance, w);
    acc.cka = add_weighted(acc.cka, pv.cka, w);
    if (acc.cka_layers.empty()) acc.cka_layers = pv.cka_layers;
  }
  acc.tokens = total_tokens;
  return acc;
}

LossValues accumulate_gradients(model::CausalLM& student, model::CausalLM* teacher,
                                const std::vector<data::BatchTensors>& micro_batches, const TrainConfig& c,
                                uint64_t rng_seed, bool inject_nan, int64_t global_tokens,
                                const std::function<void()>& before_last_backward, uint64_t seed_stride) {
  return read_values(accumulate_gradients_on_device(student, teacher, micro_batches, c, rng_seed, inject_nan,
                                                    global_tokens, before_last_backward, seed_stride));
}

QueuedStep queue_train_step(model::CausalLM& student, model::CausalLM* teacher,
                            const std::vector<data::BatchTensors>& micro_batches, Optimizer& optimizer,
                            const StepOptions& o, const QueuedStep* previous) {
  QueuedStep q;
  if (o.parallel != nullptr || !optimizer.device_step_available()) {
    QAD_CHECK(previous == nullptr || previous->result_,
              "queue_train_step: this step waits for the device, so the step before it must be read first");
    q.result_ = train_step(student, teacher, micro_batches, optimizer, o);
    *q.was_read_ = true;
    return q;
  }
  QAD_CHECK(o.config != nullptr && !micro_batches.empty(), "train_step: no config or no micro-batches");
  QAD_CHECK(previous == nullptr || previous->before_read_ == nullptr || *previous->before_read_,
            "queue_train_step: the step before `previous` is still unread; read it first (one unread step at most)");
  const TrainConfig& c = *o.config;
  optimizer.zero_grad();
  q.values_ = accumulate_gradients_on_device(student, teacher, micro_batches, c, o.rng_seed, o.inject_nan);
  step_mark(kMarkOptimizer);
  auto norm = optimizer.grad_norm_tensor();
  const auto opts = norm.options();
  q.apply_ = torch::isfinite(q.values_.loss.to(norm.device())).logical_and(torch::isfinite(norm)).to(torch::kFloat32);
  auto scale = torch::ones({}, opts);
  if (c.optim.grad_clip > 0) scale = torch::where(norm > c.optim.grad_clip, c.optim.grad_clip / (norm + 1e-6), scale);
  const bool previous_unread = previous != nullptr && !previous->result_;
  if (previous_unread) q.before_read_ = previous->was_read_;
  optimizer.step_on_device(o.lr, scale.to(torch::kFloat32), q.apply_,
                           previous_unread ? previous->apply_ : torch::Tensor());
  optimizer.zero_grad();
  // The step's only transfer, queued after all of its work: read_train_step waits for it.
  step_mark(kMarkRead);
  q.read_ = PendingRead(flatten_values(q.values_, {norm, q.apply_}));
  return q;
}

StepResult read_train_step(QueuedStep& q, Optimizer& optimizer) {
  if (q.result_) return *q.result_;
  QAD_CHECK(!q.read_.empty(), "read_train_step: no step was queued");
  const auto& host = q.read_.wait();
  std::vector<double> extra;
  StepResult r;
  r.values = parse_values(q.values_, host.data_ptr<double>(), 2, &extra);
  r.grad_norm = extra[0];
  r.skipped = extra[1] == 0.0;
  if (r.skipped) optimizer.cancel_step();
  q.result_ = r;
  *q.was_read_ = true;
  return r;
}

StepResult train_step(model::CausalLM& student, model::CausalLM* teacher,
                      const std::vector<data::BatchTensors>& micro_batches, Optimizer& optimizer, const StepOptions& o) {
  QAD_CHECK(o.config != nullptr && !micro_batches.empty(), "train_step: no config or no micro-batches");
  const TrainConfig& c = *o.config;
  StepResult r;
  if (o.parallel == nullptr && optimizer.device_step_available()) {
    auto q = queue_train_step(student, teacher, micro_batches, optimizer, o);
    if (o.on_queued) o.on_queued();
    return read_train_step(q, optimizer);
  }
  optimizer.zero_grad();
  if (DataParallel* dp = o.parallel) {
    int64_t local = 0;
    for (const auto& b : micro_batches) local += data::loss_tokens(b);
    const int64_t global = dp->sum_tokens(local);
    dp->begin_step();
    // Rank r's micro-batch i holds the rows of the global batch's micro-batch i * W + r (the loader's step i, block
    // r) and draws from that index's stream, rng_seed + i * W + r: the stream that a one-process run of W * A
    // micro-batches (or any other split with this batch_size) gives the same rows (docs/dist.md).
    const auto world = static_cast<uint64_t>(dp->config().world_size);
    const uint64_t seed = o.rng_seed + static_cast<uint64_t>(dp->rank());
    auto values = accumulate_gradients(student, teacher, micro_batches, c, seed, o.inject_nan,
                                       std::max<int64_t>(global, 1), [dp] { dp->before_last_backward(); }, world);
    dp->finish_gradients();
    // A non-finite loss on any rank makes the reduced loss (and gradient) non-finite on all: they skip together.
    r.values = dp->reduce_values(values, global);
  } else {
    r.values = accumulate_gradients(student, teacher, micro_batches, c, o.rng_seed, o.inject_nan);
  }
  r.grad_norm = optimizer.grad_norm();
  if (!std::isfinite(r.values.loss) || !std::isfinite(r.grad_norm)) {
    r.skipped = true;
    optimizer.zero_grad();
    return r;
  }
  if (c.optim.grad_clip > 0 && r.grad_norm > c.optim.grad_clip) {
    optimizer.scale_grads(c.optim.grad_clip / (r.grad_norm + 1e-6));
  }
  optimizer.step(o.lr);
  optimizer.zero_grad();
  return r;
}

}  // namespace qad::train
