// The training step (see step.h).
#include "train/step.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "loss/cka_loss.h"
#include "loss/logit_losses.h"
#include "train/distributed.h"
#include "train/moe_training.h"
#include "util/error.h"

namespace qad::train {
namespace {

bool has_padding(const data::BatchTensors& b) {
  return b.attention_mask.defined() && !b.attention_mask.all().item<bool>();
}

}  // namespace

std::vector<std::string> default_cka_layers(const model::ModelConfig& c) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < c.num_layers; ++i) out.push_back(fmt::format("layers.{}", i));
  return out;
}

LossParts compute_losses(model::CausalLM& student, model::CausalLM* teacher, const data::BatchTensors& batch,
                         const LossConfig& loss, bool activation_checkpointing, torch::Generator* gen) {
  const bool want_cka = loss.cka_weight > 0;
  const bool need_teacher = loss.kl_weight > 0 || want_cka;
  QAD_CHECK(!need_teacher || teacher != nullptr, "the KL and CKA terms need a teacher model");
  model::ForwardOptions fo;
  fo.return_hidden = want_cka;
  if (has_padding(batch)) fo.attention_mask = batch.attention_mask;
  loss::CkaLossOptions co;
  if (want_cka) {
    co.weight = loss.cka_weight;
    co.estimator = loss.cka_estimator == "debiased" ? loss::CkaEstimator::kDebiased : loss::CkaEstimator::kBiased;
    co.subsample_tokens = loss.cka_subsample_tokens;
    co.dynamic_balance = loss.cka_dynamic_balance;
    co.layers = loss.cka_layers.empty() ? default_cka_layers(student->config()) : loss.cka_layers;
    // CKA over the real input tokens (prompt and answer alike), not only the supervised ones. Chosen before the
    // forwards so that both models keep only these rows of each layer's output.
    const auto& ids = batch.input_ids;
    fo.hidden_rows = loss::select_cka_tokens(fo.attention_mask, ids.size(0), ids.size(1), co, gen,
                                             student->parameters().front().device()).index;
  }

  model::ForwardOutput t_out;
  if (need_teacher) {
    torch::NoGradGuard ng;
    t_out = (*teacher)->forward(batch.input_ids, fo);
  }
  model::ForwardOptions so = fo;
  so.checkpoint_layers = activation_checkpointing;
  so.return_router_logits = loss.router_balance_weight > 0;
  auto s_out = student->forward(batch.input_ids, so);

  LossParts p;
  auto& v = p.values;
  v.tokens = batch.loss_mask.sum().item<int64_t>();
  // The loss is summed in FP32 (FP64 for FP64 models, which the tests use).
  const auto acc = s_out.logits.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  torch::Tensor total = torch::zeros({}, s_out.logits.options().dtype(acc));
  torch::Tensor kl;
  if (loss.kl_weight > 0) {
    loss::KLOptions ko{.temperature = loss.temperature, .top_k = loss.kl_top_k, .chunk_tokens = loss.chunk_tokens};
    kl = loss::kl_divergence(s_out.logits, t_out.logits, batch.loss_mask, ko);
    v.kl = kl.item<double>();
    total = total + loss.kl_weight * kl.to(acc);
  }
  if (loss.ce_weight > 0) {
    auto ce = loss::cross_entropy(s_out.logits, batch.targets, batch.loss_mask, loss.chunk_tokens);
    v.ce = ce.item<double>();
    total = total + loss.ce_weight * ce.to(acc);
  } else if (loss.log_ce) {
    torch::NoGradGuard ng;
    v.ce = loss::cross_entropy(s_out.logits.detach(), batch.targets, batch.loss_mask, loss.chunk_tokens).item<double>();
  }
  if (want_cka) {
    auto r = loss::cka_loss_on_tokens(t_out.hidden, s_out.hidden, co, v.kl);
    double term = 0;
    for (const auto& [n, c] : r.per_layer_cka) term += (1 - c) / static_cast<double>(r.per_layer_cka.size());
    v.cka_term = term;
    v.cka = r.per_layer_cka;
    total = total + r.loss.to(acc);
  }
  if (loss.router_balance_weight > 0) {
    auto balance = router_balance_loss(student, s_out);
    v.router_balance = balance.item<double>();
    total = total + loss.router_balance_weight * balance.to(acc);
  }
  v.loss = total.item<double>();
  p.total = total;
  return p;
}

LossValues accumulate_gradients(model::CausalLM& student, model::CausalLM* teacher,
                                const std::vector<data::BatchTensors>& micro_batches, const TrainConfig& c,
                                uint64_t rng_seed, bool inject_nan, int64_t global_tokens,
                                const std::function<void()>& before_last_backward) {
  int64_t total_tokens = 0;
  for (const auto& b : micro_batches) total_tokens += b.loss_mask.sum().item<int64_t>();
  const double denom = static_cast<double>(std::max<int64_t>(total_tokens, 1));
  const bool parallel = global_tokens > 0;
  const double global_denom = static_cast<double>(std::max<int64_t>(global_tokens, 1));
  const double poison = inject_nan ? std::numeric_limits<double>::quiet_NaN() : 1.0;
  LossValues acc;
  acc.tokens = total_tokens;
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(rng_seed + i);
    auto parts = compute_losses(student, teacher, micro_batches[i], c.loss, c.run.activation_checkpointing, &gen);
    const double w = micro_batches.size() == 1 ? 1.0 : static_cast<double>(parts.values.tokens) / denom;
    // Data parallel: the gradient is weighted by the micro-batch's share of the global tokens instead.
    const double gw = parallel ? static_cast<double>(parts.values.tokens) / global_denom : w;
    if (before_last_backward && i + 1 == micro_batches.size()) before_last_backward();
    (parts.total * (gw * poison)).backward();
    const auto& pv = parts.values;
    acc.loss += w * pv.loss * poison;
    auto add = [&](std::optional<double>& dst, const std::optional<double>& x) {
      if (x) dst = dst.value_or(0.0) + w * *x;
    };
    add(acc.kl, pv.kl);
    add(acc.ce, pv.ce);
    add(acc.router_balance, pv.router_balance);
    add(acc.cka_term, pv.cka_term);
    if (acc.cka.empty()) {
      for (const auto& [n, x] : pv.cka) acc.cka.emplace_back(n, 0.0);
    }
    for (size_t l = 0; l < pv.cka.size() && l < acc.cka.size(); ++l) acc.cka[l].second += w * pv.cka[l].second;
  }
  return acc;
}

StepResult train_step(model::CausalLM& student, model::CausalLM* teacher,
                      const std::vector<data::BatchTensors>& micro_batches, Optimizer& optimizer, const StepOptions& o) {
  QAD_CHECK(o.config != nullptr && !micro_batches.empty(), "train_step: no config or no micro-batches");
  const TrainConfig& c = *o.config;
  StepResult r;
  optimizer.zero_grad();
  if (DataParallel* dp = o.parallel) {
    int64_t local = 0;
    for (const auto& b : micro_batches) local += b.loss_mask.sum().item<int64_t>();
    const int64_t global = dp->sum_tokens(local);
    dp->begin_step();
    auto values = accumulate_gradients(student, teacher, micro_batches, c, o.rng_seed, o.inject_nan,
                                       std::max<int64_t>(global, 1), [dp] { dp->before_last_backward(); });
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
