// Validation pass (see validate.h). CE / perplexity, KL and agreement are loss/token_metrics.h's sums, the
// ones `qad eval` reports.
#include "train/validate.h"

#include <algorithm>
#include <cmath>

#include "data/batch_tensors.h"
#include "loss/cka_accumulator.h"
#include "loss/token_metrics.h"
#include "train/moe_training.h"
#include "train/step.h"

namespace qad::train {

ValidResult validate(model::CausalLM& student, model::CausalLM* teacher, data::Loader& loader, int64_t max_batches,
                     const std::vector<std::string>& extra_cka_layers, torch::Device device, int64_t chunk_tokens) {
  torch::NoGradGuard ng;
  const bool was_training = student->is_training();
  student->eval();
  const auto decoder_layers = default_cka_layers(student->config());
  auto layers = decoder_layers;
  for (const auto& l : extra_cka_layers) {
    if (std::find(layers.begin(), layers.end(), l) == layers.end()) layers.push_back(l);
  }
  data::LoaderState start = loader.state();
  start.epoch = 0;
  start.step = 0;
  loader.restore(start);

  ValidResult r;
  loss::TokenMetricSums sums;
  loss::CkaAccumulator cka(/*full=*/false);
  RouterAgreement routers;
  const bool moe = teacher != nullptr && is_moe(student) && is_moe(*teacher);
  const int64_t n = std::min<int64_t>(max_batches, loader.steps_per_epoch());
  for (int64_t i = 0; i < n; ++i) {
    auto b = data::to_tensors(loader.next(), device);
    model::ForwardOptions fo;
    fo.return_hidden = teacher != nullptr;
    fo.return_router_logits = moe;
    if (data::has_padding(b)) fo.attention_mask = b.attention_mask;
    auto s = student->forward(b.input_ids, fo);
    const auto scored = loss::scored_rows(s.logits, b.targets, b.loss_mask);
    if (scored.rows.size(0) == 0) continue;
    ++r.batches;
    r.seq_len = b.input_ids.size(1);
    if (!teacher) {
      sums.add(scored.logits, scored.targets, torch::Tensor(), chunk_tokens);
    } else {
      auto t = (*teacher)->forward(b.input_ids, fo);
      const auto t_logits = t.logits.reshape({-1, t.logits.size(-1)}).index_select(0, scored.rows);
      sums.add(scored.logits, scored.targets, t_logits, chunk_tokens);
      if (moe) routers.add(s, t, student->config().moe->top_k, b.loss_mask > 0);
      for (const auto& name : layers) {
        const torch::Tensor *th = nullptr, *sh = nullptr;
        for (const auto& [k, v] : t.hidden) if (k == name) th = &v;
        for (const auto& [k, v] : s.hidden) if (k == name) sh = &v;
        if (th && sh) cka.add(name, *th, *sh, fo.attention_mask);
      }
    }
  }
  r.tokens = sums.tokens;
  if (r.tokens > 0) {
    const double nt = static_cast<double>(r.tokens);
    r.ce = sums.nll / nt;
    r.ppl = std::exp(r.ce);
    if (teacher) {
      r.kl = sums.kl / nt;
      r.agreement = static_cast<double>(sums.agree) / nt;
      double sum = 0;
      int64_t in_mean = 0;
      for (const auto& l : cka.result()) {
        r.cka.emplace_back(l.layer, l.minibatch_biased);
        if (std::find(decoder_layers.begin(), decoder_layers.end(), l.layer) == decoder_layers.end()) continue;
        sum += l.minibatch_biased;
        ++in_mean;
      }
      if (in_mean > 0) r.mean_cka = sum / static_cast<double>(in_mean);
      r.router_agreement = routers.per_layer();
      r.mean_router_agreement = routers.mean();
    }
  }
  if (was_training) student->train();
  return r;
}

}  // namespace qad::train
