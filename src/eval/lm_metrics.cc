// Perplexity / KL / top-1 agreement over windows of a token stream (docs/eval.md).
#include "eval/lm_metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "loss/token_metrics.h"
#include "util/error.h"
#include "util/progress.h"

namespace qad::eval {
namespace {

struct WindowBatch {
  torch::Tensor input_ids;  // int64 [B, T] (right-padded with 0; padding is never a scored target)
  torch::Tensor rows;       // int64 [n]: flat indexes b*T + t of the scored targets
  torch::Tensor targets;    // int64 [n]
};

WindowBatch make_batch(const TokenStream& s, const std::vector<Window>& windows, size_t first, size_t count,
                       torch::Device device) {
  int64_t t_max = 0;
  for (size_t i = first; i < first + count; ++i) t_max = std::max(t_max, windows[i].length - 1);
  auto ids = torch::zeros({static_cast<int64_t>(count), t_max}, torch::kInt64);
  auto acc = ids.accessor<int64_t, 2>();
  std::vector<int64_t> rows, targets;
  for (size_t b = 0; b < count; ++b) {
    const auto& w = windows[first + b];
    for (int64_t t = 0; t + 1 < w.length; ++t) {
      acc[static_cast<int64_t>(b)][t] = s.ids[static_cast<size_t>(w.begin + t)];
      const auto target = static_cast<size_t>(w.begin + t + 1);
      if (s.mask[target]) {
        rows.push_back(static_cast<int64_t>(b) * t_max + t);
        targets.push_back(s.ids[target]);
      }
    }
  }
  WindowBatch wb;
  wb.input_ids = ids.to(device);
  wb.rows = torch::tensor(rows, torch::kInt64).to(device);
  wb.targets = torch::tensor(targets, torch::kInt64).to(device);
  return wb;
}

torch::Tensor scored_rows(const torch::Tensor& logits, const torch::Tensor& rows) {
  return logits.reshape({-1, logits.size(-1)}).index_select(0, rows);
}

}  // namespace

LmMetrics evaluate_lm(model::CausalLM& model, model::CausalLM* teacher, const TokenStream& stream,
                      const LmEvalOptions& o) {
  QAD_CHECK(o.batch_size >= 1, "--batch-size must be >= 1, got {}", o.batch_size);
  if (teacher != nullptr) {
    QAD_CHECK((*teacher)->config().vocab_size == model->config().vocab_size,
              "teacher and model vocabularies differ ({} vs {} tokens): KL and agreement need the same tokenizer",
              (*teacher)->config().vocab_size, model->config().vocab_size);
  }
  const int64_t max_pos = model->config().max_position_embeddings;
  if (max_pos > 0 && o.seq_len > max_pos) {
    fmt::print(stderr, "warning: --seq-len {} exceeds the model's max_position_embeddings {}\n", o.seq_len, max_pos);
  }
  torch::NoGradGuard no_grad;
  const auto device = model->lm_head->weight.device();
  const auto windows = make_windows(static_cast<int64_t>(stream.ids.size()), o.seq_len);

  LmMetrics m;
  m.windows = static_cast<int64_t>(windows.size());
  m.stream_tokens = static_cast<int64_t>(stream.ids.size());
  loss::TokenMetricSums sums;
  const auto start = std::chrono::steady_clock::now();
  std::optional<Progress> progress;
  if (o.progress) progress.emplace(teacher != nullptr ? "perplexity+KL" : "perplexity", m.windows, "windows");
  for (size_t first = 0; first < windows.size(); first += static_cast<size_t>(o.batch_size)) {
    const size_t count = std::min(static_cast<size_t>(o.batch_size), windows.size() - first);
    auto batch = make_batch(stream, windows, first, count, device);
    if (batch.targets.size(0) > 0) {
      auto logits = scored_rows(model->forward(batch.input_ids).logits, batch.rows);
      torch::Tensor t_logits;
      if (teacher != nullptr) {
        const auto t_device = (*teacher)->lm_head->weight.device();
        t_logits = scored_rows((*teacher)->forward(batch.input_ids.to(t_device)).logits, batch.rows.to(t_device))
                       .to(device);
      }
      sums.add(logits, batch.targets, t_logits, o.chunk_rows, /*score_teacher=*/true);
    }
    m.scored_tokens = sums.tokens;
    if (progress) {
      progress->advance(static_cast<int64_t>(count),
                       m.scored_tokens > 0 ? fmt::format("ppl {:.4f}", std::exp(sums.nll / static_cast<double>(m.scored_tokens)))
                                           : std::string());
    }
  }
  if (progress) progress->finish();
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  QAD_CHECK(m.scored_tokens > 0, "no scored tokens in the data ({} tokens; chat data scores assistant tokens only)",
            m.stream_tokens);
  const double n = static_cast<double>(m.scored_tokens);
  m.nll = sums.nll / n;
  m.perplexity = std::exp(m.nll);
  if (teacher != nullptr) {
    m.teacher_nll = sums.teacher_nll / n;
    m.teacher_perplexity = std::exp(*m.teacher_nll);
    m.kl = sums.kl / n;
    m.top1_agreement = static_cast<double>(sums.agree) / n;
  }
  return m;
}

}  // namespace qad::eval
