// Continuous-batching generation and counter-based sampling. The reference for generation is the plainest
// possible loop: one prompt, the full forward over the whole sequence each step (no cache at all), the
// last position's logits through select_tokens with the sequence's stream. The engine must give exactly
// those tokens however prompts share slots, refill them and shrink the batch.
#include "common/test_util.h"
#include "model/generate_test_util.h"
#include "model/batched_generate.h"
#include "model/causal_lm.h"
#include "model/sampling.h"
#include "model/slot_kv_cache.h"
#include "util/error.h"

namespace qad::model {
namespace {
using nlohmann::json;

const std::vector<std::pair<std::string, bool>> kFamilies = {
    {"LlamaForCausalLM", false}, {"Qwen2ForCausalLM", false}, {"Qwen3ForCausalLM", true}};

TEST(BatchedGenerate, GreedyEqualsOnePromptAtATimeWithoutCache) {
  for (const auto& [arch, tied] : kFamilies) {
    SCOPED_TRACE(arch);
    auto lm = tiny_model(arch, tied, 11);
    auto requests = random_requests(9, 12);
    BatchedGenerateOptions o;
    o.max_new_tokens = 20;
    o.stop_ids = {7, 19, 33};  // some sequences stop early, others run to the limit
    std::vector<GenerationOutput> want;
    for (const auto& r : requests) want.push_back(reference_generate(lm, r, o));
    int stopped = 0;
    for (const auto& w : want) stopped += w.stopped ? 1 : 0;
    RecordProperty("stopped_" + arch, stopped);
    // 3 slots for 9 prompts: refills; check every 2 or 5 steps: finished slots idle in between;
    // all 9 at once: no refill, compaction at the end.
    for (auto [slots, every] : {std::pair<int64_t, int64_t>{3, 2}, {3, 5}, {9, 1}, {1, 3}}) {
      o.max_slots = slots;
      o.check_every = every;
      GenerateStats stats;
      expect_equal_outputs(generate_batched(lm, requests, o, &stats), want,
                           "slots " + std::to_string(slots) + " check " + std::to_string(every));
      EXPECT_EQ(stats.slots, slots);
    }
  }
}

TEST(BatchedGenerate, SamplingFollowsEachSequencesStreamWhateverTheBatch) {
  auto lm = tiny_model("Qwen3ForCausalLM", true, 13);
  auto requests = random_requests(7, 14);
  for (size_t i = 0; i < requests.size(); ++i) requests[i].sample = i % 3;
  BatchedGenerateOptions o;
  o.max_new_tokens = 16;
  o.sampling = {.greedy = false, .temperature = 1.3, .top_k = 40, .top_p = 0.9, .seed = 5};
  o.stop_ids = {3};
  std::vector<GenerationOutput> want;
  for (const auto& r : requests) want.push_back(reference_generate(lm, r, o));
  for (int64_t slots : {1, 3, 7}) {
    o.max_slots = slots;
    expect_equal_outputs(generate_batched(lm, requests, o), want, "slots " + std::to_string(slots));
  }
  // Another seed changes the samples (16 tokens at T = 1.3 from a random model: equal by chance ~never).
  auto other = o;
  other.sampling.seed = 6;
  EXPECT_NE(generate_batched(lm, requests, other)[0].new_ids, want[0].new_ids);
}

TEST(BatchedGenerate, ZeroNewTokensAndBadInputs) {
  auto lm = tiny_model("LlamaForCausalLM", false, 15);
  BatchedGenerateOptions o;
  o.max_new_tokens = 0;
  auto out = generate_batched(lm, {{{1, 2}, 0, 0}}, o);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].new_ids.empty());
  o.max_new_tokens = 1;
  EXPECT_THROW(generate_batched(lm, {{{}, 0, 0}}, o), Error);
  EXPECT_THROW(generate_batched(lm, {{{96}, 0, 0}}, o), Error);
  o.sampling.greedy = false;
  o.sampling.temperature = 0;
  EXPECT_THROW(generate_batched(lm, {{{1}, 0, 0}}, o), Error);
}

TEST(BatchedGenerate, PlannerFitsTheKvCacheInTheGivenMemory) {
  auto lm = tiny_model("Qwen3ForCausalLM", true, 16);
  // 2 layers x 2 kv heads x 16 dims x (k, v) x 4 bytes = 512 bytes per token.
  EXPECT_EQ(SlotKVCache::bytes_per_token(lm->config(), torch::kFloat32), 512);
  BatchedGenerateOptions o;
  EXPECT_EQ(plan_slots(lm->config(), torch::kCPU, torch::kFloat32, 1000, 300, o), 64);  // CPU default
  EXPECT_EQ(plan_slots(lm->config(), torch::kCPU, torch::kFloat32, 10, 300, o), 10);    // never above the requests
  o.max_slots = 5;
  EXPECT_EQ(plan_slots(lm->config(), torch::kCPU, torch::kFloat32, 1000, 300, o), 5);
}

TEST(Sampling, TensorStreamEqualsTheHostReference) {
  std::vector<int64_t> keys, steps;
  for (uint64_t item = 0; item < 50; ++item) {
    keys.push_back(static_cast<int64_t>(stream_key(42, item, item % 4)));  // half of them negative as int64
    steps.push_back(static_cast<int64_t>(item * 977 % 5000));
  }
  keys.push_back(-1);
  steps.push_back(0);
  keys.push_back(std::numeric_limits<int64_t>::min());
  steps.push_back(4294967295);
  auto u = stream_uniforms(torch::tensor(keys, torch::kLong), torch::tensor(steps, torch::kLong));
  for (size_t i = 0; i < keys.size(); ++i) {
    const double want = stream_uniform(static_cast<uint64_t>(keys[i]), steps[i]);
    EXPECT_EQ(u[static_cast<int64_t>(i)].item<double>(), want) << i;
    EXPECT_GT(want, 0.0);
    EXPECT_LT(want, 1.0);
  }
  EXPECT_NE(stream_key(1, 2, 3), stream_key(1, 3, 2));
  EXPECT_NE(stream_key(1, 2, 3), stream_key(2, 2, 3));
}

TEST(Sampling, DrawsFollowTheFilteredDistribution) {
  // p = (0.1, 0.2, 0.3, 0.4) (logits = log p). With top_p = 0.6 the nucleus is {3, 2}: token 3 (0.4) stays,
  // token 2 stays (mass before it 0.4 < 0.6), token 1 goes (0.7 >= 0.6): renormalised 4/7, 3/7. top_k = 3
  // drops token 0: 2/9, 3/9, 4/9. Each row is one stream; 40,000 streams give frequencies within 4 sigma.
  const int64_t n = 40000;
  auto logits = torch::log(torch::tensor({0.1, 0.2, 0.3, 0.4}, torch::kFloat32)).unsqueeze(0).expand({n, 4});
  std::vector<int64_t> keys(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) keys[static_cast<size_t>(i)] = static_cast<int64_t>(stream_key(9, static_cast<uint64_t>(i), 0));
  auto k = torch::tensor(keys, torch::kLong);
  auto steps = torch::full({n}, 3, torch::kLong);
  auto check = [&](const SamplingOptions& o, std::vector<double> want) {
    auto t = select_tokens(logits, o, k, steps);
    auto counts = torch::bincount(t, {}, 4).to(torch::kFloat64) / static_cast<double>(n);
    for (int64_t v = 0; v < 4; ++v) {
      const double p = want[static_cast<size_t>(v)];
      EXPECT_NEAR(counts[v].item<double>(), p, 4 * std::sqrt(p * (1 - p) / n) + 1e-12) << "token " << v;
    }
  };
  check({.greedy = false, .temperature = 1.0}, {0.1, 0.2, 0.3, 0.4});
  check({.greedy = false, .temperature = 1.0, .top_p = 0.6}, {0, 0, 3.0 / 7, 4.0 / 7});
  check({.greedy = false, .temperature = 1.0, .top_k = 3}, {0, 2.0 / 9, 3.0 / 9, 4.0 / 9});
  // Temperature 0.5 squares the probabilities: 1, 4, 9, 16 over 30.
  check({.greedy = false, .temperature = 0.5}, {1.0 / 30, 4.0 / 30, 9.0 / 30, 16.0 / 30});
  check({.greedy = true}, {0, 0, 0, 1});
}

TEST(Sampling, InverseCdfPicksTheClosedFormToken) {
  // Vocabulary order without top-p: the first token whose cumulative probability exceeds u.
  auto logits = torch::log(torch::tensor({0.1, 0.2, 0.3, 0.4}, torch::kFloat32)).unsqueeze(0);
  const double cdf[4] = {0.1, 0.3, 0.6, 1.0};
  for (uint64_t item = 0; item < 200; ++item) {
    const auto key = stream_key(1, item, 0);
    const double u = stream_uniform(key, 0);
    int64_t want = 0;
    while (want < 3 && !(cdf[want] > u)) ++want;
    if (std::abs(u - cdf[want]) < 1e-6 || (want > 0 && std::abs(u - cdf[want - 1]) < 1e-6)) continue;  // FP32 edge
    auto got = select_tokens(logits, {.greedy = false}, torch::tensor({static_cast<int64_t>(key)}, torch::kLong),
                             torch::zeros({1}, torch::kLong));
    EXPECT_EQ(got.item<int64_t>(), want) << "u = " << u;
  }
}

}  // namespace
}  // namespace qad::model
