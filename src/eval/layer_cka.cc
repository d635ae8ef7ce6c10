// Per-layer CKA of models against a teacher over a token stream (docs/eval.md "Layerwise CKA").
#include "eval/layer_cka.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include "model/finite_check.h"
#include "util/error.h"
#include "util/progress.h"

namespace qad::eval {
namespace {

bool wanted(const std::string& name, const CkaEvalOptions& o) {
  return name.rfind("layers.", 0) == 0 || (o.include_norm && name == "norm");
}

}  // namespace

report::LayerCka to_report(const loss::LayerCka& l) {
  report::LayerCka r;
  r.layer = l.layer;
  r.biased = l.full_biased;
  r.debiased = l.full_debiased;
  r.minibatch_biased = l.minibatch_biased;
  r.minibatch_debiased = l.minibatch_debiased;
  return r;
}

CkaEvalResult layer_cka(model::CausalLM& teacher, const std::vector<NamedModel>& models, const TokenStream& stream,
                        const CkaEvalOptions& o) {
  QAD_CHECK(!models.empty(), "qad cka: give at least one --model");
  QAD_CHECK(o.batch_size >= 1 && o.seq_len >= 1, "--batch-size and --seq-len must be >= 1");
  for (const auto& m : models) {
    QAD_CHECK((*m.lm)->config().num_layers == teacher->config().num_layers,
              "model {} has {} decoder layers, the teacher {}: per-layer CKA matches layers by index", m.label,
              (*m.lm)->config().num_layers, teacher->config().num_layers);
  }
  torch::NoGradGuard no_grad;
  const auto device = teacher->lm_head->weight.device();
  // Windows of seq_len tokens (all positions count, so no +1 target token is needed).
  const int64_t n = static_cast<int64_t>(stream.ids.size());
  std::vector<Window> windows;
  for (int64_t b = 0; b < n; b += o.seq_len) windows.push_back({b, std::min(o.seq_len, n - b)});

  std::vector<loss::CkaAccumulator> acc(models.size(), loss::CkaAccumulator(o.full));
  CkaEvalResult result;
  const auto start = std::chrono::steady_clock::now();
  std::optional<Progress> progress;
  if (o.progress) progress.emplace("cka", static_cast<int64_t>(windows.size()), "windows");
  for (size_t first = 0; first < windows.size(); first += static_cast<size_t>(o.batch_size)) {
    const size_t count = std::min(static_cast<size_t>(o.batch_size), windows.size() - first);
    int64_t t_max = 0;
    for (size_t k = 0; k < count; ++k) t_max = std::max(t_max, windows[first + k].length);
    auto ids = torch::zeros({static_cast<int64_t>(count), t_max}, torch::kInt64);
    auto mask = torch::zeros({static_cast<int64_t>(count), t_max}, torch::kFloat32);
    auto ia = ids.accessor<int64_t, 2>();
    auto ma = mask.accessor<float, 2>();
    for (size_t k = 0; k < count; ++k) {
      const auto& w = windows[first + k];
      for (int64_t t = 0; t < w.length; ++t) {
        ia[static_cast<int64_t>(k)][t] = stream.ids[static_cast<size_t>(w.begin + t)];
        ma[static_cast<int64_t>(k)][t] = 1.0f;
      }
    }
    ids = ids.to(device);
    mask = mask.to(device);
    model::ForwardOptions fo;
    fo.return_hidden = true;
    fo.logits_to_keep = 1;  // only hidden states are needed
    // Right padding with plain causal attention: real positions never see the padding after them.
    auto t_out = teacher->forward(ids, fo);
    for (size_t m = 0; m < models.size(); ++m) {
      auto m_out = (*models[m].lm)->forward(ids.to((*models[m].lm)->lm_head->weight.device()), fo);
      for (const auto& [name, th] : t_out.hidden) {
        if (!wanted(name, o)) continue;
        auto it = std::find_if(m_out.hidden.begin(), m_out.hidden.end(), [&](const auto& p) { return p.first == name; });
        QAD_CHECK(it != m_out.hidden.end(), "model {} has no hidden state {}", models[m].label, name);
        // Overflowing activations (or a model gone wrong) would give a table of nan: say where instead.
        QAD_CHECK(model::all_finite(th), "the teacher's hidden state {} holds NaN or Inf values (batch {}); its "
                  "activations overflow: try --dtype float32", name, result.batches + 1);
        QAD_CHECK(model::all_finite(it->second), "model {}: hidden state {} holds NaN or Inf values (batch {}); its "
                  "activations overflow: try --dtype float32", models[m].label, name, result.batches + 1);
        acc[m].add(name, th, it->second.to(device), mask);
      }
    }
    result.tokens += static_cast<int64_t>(mask.sum().item<double>());
    ++result.batches;
    if (progress) progress->advance(static_cast<int64_t>(count));
  }
  if (progress) progress->finish();
  for (size_t m = 0; m < models.size(); ++m) {
    report::ModelCkaResult r;
    r.model = models[m].label;
    for (const auto& l : acc[m].result()) r.layers.push_back(to_report(l));
    result.models.push_back(std::move(r));
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace qad::eval
