// Rolling per-document perplexity (rolling_perplexity.h).
#include "eval/rolling_perplexity.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "eval/lm_metrics.h"
#include "loss/token_metrics.h"
#include "util/error.h"
#include "util/progress.h"

namespace qad::eval {

std::vector<RollingWindow> rolling_windows(const std::vector<int32_t>& doc, int32_t prefix, int64_t seq_len,
                                           int64_t document) {
  QAD_CHECK(seq_len >= 1, "--seq-len must be >= 1, got {}", seq_len);
  std::vector<int32_t> full{prefix};
  full.insert(full.end(), doc.begin(), doc.end());
  const auto n = static_cast<int64_t>(full.size());
  std::vector<RollingWindow> out;
  // Targets full[a, e); inputs full[max(0, e - 1 - seq_len), e - 1).
  for (int64_t a = 1; a < n; a += seq_len) {
    const int64_t e = std::min(n, a + seq_len);
    const int64_t begin = std::max<int64_t>(0, e - 1 - seq_len);
    RollingWindow w;
    w.document = document;
    w.tokens.assign(full.begin() + begin, full.begin() + e);
    w.targets = e - a;
    out.push_back(std::move(w));
  }
  return out;
}

RollingMetrics evaluate_rolling(model::CausalLM& model, const TokenStream& stream, const RollingOptions& o) {
  QAD_CHECK(o.batch_size >= 1, "--batch-size must be >= 1, got {}", o.batch_size);
  std::vector<RollingWindow> windows;
  RollingMetrics m;
  for (size_t d = 0; d < stream.spans.size(); ++d) {
    const auto& s = stream.spans[d];
    QAD_CHECK(!s.chat && s.has_text, "--ppl-mode rolling scores raw text documents (.jsonl {{\"text\"}} / .txt); "
              "document {} is {}: use --ppl-mode packed", d + 1, s.chat ? "a chat" : "from a prepared dataset");
    std::vector<int32_t> doc(stream.ids.begin() + s.begin, stream.ids.begin() + s.begin + s.tokens);
    int32_t prefix = o.prefix_id;
    if (o.bos_id && !doc.empty() && doc.front() == *o.bos_id) {
      prefix = doc.front();  // the template's BOS: context, not a target
      doc.erase(doc.begin());
    }
    if (doc.empty()) continue;
    QAD_CHECK(prefix >= 0, "--ppl-mode rolling: the tokenizer has neither BOS nor EOS to condition a document's first "
              "token on");
    auto w = rolling_windows(doc, prefix, o.seq_len, static_cast<int64_t>(d));
    windows.insert(windows.end(), std::make_move_iterator(w.begin()), std::make_move_iterator(w.end()));
    ++m.documents;
    m.tokens += static_cast<int64_t>(doc.size());
    m.words += s.words;
    m.bytes += s.bytes;
  }
  QAD_CHECK(m.tokens > 0, "--ppl-mode rolling: the documents hold no tokens");
  m.windows = static_cast<int64_t>(windows.size());
  torch::NoGradGuard no_grad;
  const auto device = model->lm_head->weight.device();
  const auto start = std::chrono::steady_clock::now();
  std::optional<Progress> progress;
  if (o.progress) progress.emplace("rolling perplexity", m.windows, "windows");
  int64_t scored = 0;
  for (size_t first = 0; first < windows.size(); first += static_cast<size_t>(o.batch_size)) {
    const size_t count = std::min(static_cast<size_t>(o.batch_size), windows.size() - first);
    int64_t t_max = 0;
    for (size_t i = first; i < first + count; ++i) t_max = std::max<int64_t>(t_max, static_cast<int64_t>(windows[i].tokens.size()) - 1);
    auto ids = torch::zeros({static_cast<int64_t>(count), t_max}, torch::kInt64);  // right padding: never scored
    auto acc = ids.accessor<int64_t, 2>();
    std::vector<int64_t> rows, targets;
    for (size_t b = 0; b < count; ++b) {
      const auto& w = windows[first + b];
      const auto len = static_cast<int64_t>(w.tokens.size());
      for (int64_t t = 0; t + 1 < len; ++t) acc[static_cast<int64_t>(b)][t] = w.tokens[static_cast<size_t>(t)];
      for (int64_t t = len - 1 - w.targets; t + 1 < len; ++t) {
        rows.push_back(static_cast<int64_t>(b) * t_max + t);
        targets.push_back(w.tokens[static_cast<size_t>(t + 1)]);
      }
    }
    auto logits = model->forward(ids.to(device)).logits.reshape({-1, model->config().vocab_size});
    auto picked = logits.index_select(0, torch::tensor(rows, torch::kInt64).to(device));
    m.nll_sum += loss::nll_sum(picked, torch::tensor(targets, torch::kInt64).to(device));
    scored += static_cast<int64_t>(targets.size());
    if (progress) progress->advance(static_cast<int64_t>(count), fmt::format("ppl {:.4f}", std::exp(m.nll_sum / scored)));
  }
  if (progress) progress->finish();
  QAD_CHECK(scored == m.tokens, "rolling perplexity: scored {} targets for {} document tokens", scored, m.tokens);
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  m.nll = m.nll_sum / static_cast<double>(m.tokens);
  m.perplexity = std::exp(m.nll);
  m.word_perplexity = m.words > 0 ? std::exp(m.nll_sum / static_cast<double>(m.words)) : 0.0;
  m.byte_perplexity = m.bytes > 0 ? std::exp(m.nll_sum / static_cast<double>(m.bytes)) : 0.0;
  m.bits_per_byte = m.bytes > 0 ? m.nll_sum / static_cast<double>(m.bytes) / std::log(2.0) : 0.0;
  return m;
}

}  // namespace qad::eval
