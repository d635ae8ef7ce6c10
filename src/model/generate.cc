// generate(): the continuous-batching engine (batched_generate.h) behind the simple prompts-in, tokens-out
// interface; select_next_tokens(): host-side token selection with a torch generator (kept for callers of it).
#include "model/generate.h"

#include <algorithm>
#include <limits>

#include "model/finite_check.h"
#include "model/batched_generate.h"
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
  std::vector<GenerationRequest> requests;
  for (size_t i = 0; i < prompts.size(); ++i) requests.push_back({prompts[i], i, 0});
  BatchedGenerateOptions b;
  b.max_new_tokens = o.max_new_tokens;
  b.sampling = {o.greedy, o.temperature, o.top_k, o.top_p, o.seed};
  b.stop_ids = o.stop_ids;
  b.max_slots = o.max_slots;
  b.attention = o.attention;
  GenerateResult result;
  for (auto& out : generate_batched(lm, requests, b)) {
    result.new_ids.push_back(std::move(out.new_ids));
    result.stopped.push_back(out.stopped);
  }
  return result;
}

}  // namespace qad::model
