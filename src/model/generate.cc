// Generation loop: one prefill over the padded prompts, then one token per step through the KV cache.
#include "model/generate.h"

#include <algorithm>
#include <limits>

#include "model/finite_check.h"
#include "util/error.h"

namespace qad::model {

torch::Tensor select_next_tokens(const torch::Tensor& logits, const GenerateOptions& o, torch::Generator& gen) {
  auto l = logits.to(torch::kCPU, torch::kFloat32);
  // NaN logits would make argmax return token 0 forever and multinomial throw: stop with the cause instead.
  QAD_CHECK(all_finite(l), "generate: the model's logits hold NaN or Inf values; its weights or activations overflow "
            "(in {}); check the checkpoint with qad eval", c10::toString(logits.scalar_type()));
  if (o.greedy) return l.argmax(-1);
  QAD_CHECK(o.temperature > 0, "temperature must be > 0 for sampling (use greedy instead of 0), got {}", o.temperature);
  QAD_CHECK(o.top_p > 0 && o.top_p <= 1, "top_p must be in (0, 1], got {}", o.top_p);
  QAD_CHECK(o.top_k >= 0, "top_k must be >= 0, got {}", o.top_k);
  l = l / o.temperature;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (o.top_k > 0 && o.top_k < l.size(-1)) {
    auto kth = std::get<0>(l.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    l = l.masked_fill(l < kth, neg_inf);
  }
  if (o.top_p < 1) {
    auto [sorted, idx] = l.sort(-1, /*descending=*/true);
    auto probs = sorted.softmax(-1);
    // Drop a token when the mass before it already reaches top_p (the most likely token always stays).
    auto drop_sorted = (probs.cumsum(-1) - probs) >= o.top_p;
    auto drop = torch::zeros_like(drop_sorted).scatter(-1, idx, drop_sorted);
    l = l.masked_fill(drop, neg_inf);
  }
  return torch::multinomial(l.softmax(-1), 1, /*replacement=*/false, gen).squeeze(-1);
}

GenerateResult generate(CausalLM& lm, const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& o) {
  QAD_CHECK(!prompts.empty(), "generate: no prompts");
  QAD_CHECK(o.max_new_tokens >= 0, "max_new_tokens must be >= 0, got {}", o.max_new_tokens);
  const auto b = static_cast<int64_t>(prompts.size());
  size_t longest = 0, shortest = std::numeric_limits<size_t>::max();
  for (const auto& p : prompts) {
    QAD_CHECK(!p.empty(), "generate: empty prompt (give at least BOS)");
    longest = std::max(longest, p.size());
    shortest = std::min(shortest, p.size());
    for (auto id : p) {
      QAD_CHECK(id >= 0 && id < lm->config().vocab_size, "generate: token id {} outside the vocabulary (size {})", id,
                lm->config().vocab_size);
    }
  }
  const auto t0 = static_cast<int64_t>(longest);
  const auto& w = lm->model->embed_tokens->weight;
  const auto device = w.device();
  GenerateResult result;
  result.new_ids.resize(prompts.size());
  result.stopped.assign(prompts.size(), false);
  if (o.max_new_tokens == 0) return result;

  // Left padding keeps every sequence's last prompt token in the final column.
  auto ids = torch::full({b, t0}, o.pad_id, torch::kLong);
  auto mask = torch::zeros({b, t0}, torch::kLong);
  for (int64_t i = 0; i < b; ++i) {
    const auto& p = prompts[static_cast<size_t>(i)];
    const auto n = static_cast<int64_t>(p.size());
    ids[i].narrow(0, t0 - n, n).copy_(torch::tensor(p, torch::kLong));
    mask[i].narrow(0, t0 - n, n).fill_(1);
  }
  const bool padded = shortest != longest;
  mask = mask.to(device);
  torch::NoGradGuard no_grad;
  KVCache cache(lm->config(), b, t0 + o.max_new_tokens, device, w.scalar_type());
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(o.seed);
  ForwardOptions fo;
  fo.cache = &cache;
  fo.attention = o.attention;
  fo.logits_to_keep = 1;
  if (padded) fo.attention_mask = mask;
  auto logits = lm->forward(ids.to(device), fo).logits;
  std::vector<bool> done(prompts.size(), false);
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    auto next = select_next_tokens(logits.select(1, -1), o, gen);
    auto acc = next.accessor<int64_t, 1>();
    bool all_done = true;
    for (int64_t i = 0; i < b; ++i) {
      const auto k = static_cast<size_t>(i);
      if (done[k]) {
        acc[i] = o.pad_id;
        continue;
      }
      result.new_ids[k].push_back(acc[i]);
      if (std::find(o.stop_ids.begin(), o.stop_ids.end(), acc[i]) != o.stop_ids.end()) {
        done[k] = result.stopped[k] = true;
      }
      all_done = all_done && done[k];
    }
    if (all_done || step + 1 == o.max_new_tokens) break;
    if (padded) {
      mask = torch::cat({mask, torch::ones({b, 1}, mask.options())}, 1);
      fo.attention_mask = mask;
    }
    logits = lm->forward(next.unsqueeze(1).to(device), fo).logits;
  }
  return result;
}

}  // namespace qad::model
