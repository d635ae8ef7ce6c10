// Helpers of the generation tests (CPU and GPU): tiny random decoders, the cache-free reference loop,
// random prompts.
#pragma once
#include "common/test_util.h"
#include "model/batched_generate.h"
#include "model/causal_lm.h"
#include "model/sampling.h"

namespace qad::model {

inline CausalLM tiny_model(const std::string& arch, bool tied, uint64_t salt) {
  nlohmann::json j = {{"architectures", {arch}}, {"vocab_size", 96}, {"hidden_size", 32}, {"intermediate_size", 48},
            {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6},
            {"max_position_embeddings", 256}, {"tie_word_embeddings", tied}, {"dtype", "float32"}};
  if (arch == "Qwen3ForCausalLM") j["head_dim"] = 16;
  CausalLM lm(parse_config(j, "tiny"));
  auto gen = qad::testing::seeded_generator(salt);
  torch::NoGradGuard g;
  for (auto& [name, p] : lm->hf_tensors()) {
    auto r = torch::randn(p.sizes(), gen);
    p.copy_(name.ends_with("norm.weight") ? 1 + 0.1 * r : 0.5 * r);
  }
  return lm;
}

// One prompt, no cache: the full forward each step.
inline GenerationOutput reference_generate(CausalLM& lm, const GenerationRequest& r, const BatchedGenerateOptions& o) {
  torch::NoGradGuard g;
  GenerationOutput out;
  std::vector<int64_t> seq = r.prompt;
  const auto key = torch::tensor({static_cast<int64_t>(stream_key(o.sampling.seed, r.item, r.sample))}, torch::kLong);
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    auto input = torch::tensor(seq, torch::kLong).unsqueeze(0).to(lm->lm_head->weight.device());
    auto logits = lm->forward(input).logits.select(1, -1);
    const int64_t next = select_tokens(logits, o.sampling, key, torch::tensor({step}, torch::kLong)).item<int64_t>();
    out.new_ids.push_back(next);
    seq.push_back(next);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end()) {
      out.stopped = true;
      break;
    }
  }
  return out;
}

inline std::vector<GenerationRequest> random_requests(int n, uint64_t salt) {
  auto gen = qad::testing::seeded_generator(salt);
  std::vector<GenerationRequest> rs;
  for (int i = 0; i < n; ++i) {
    const int64_t len = torch::randint(1, 12, {1}, gen).item<int64_t>();
    auto ids = torch::randint(0, 96, {len}, gen);
    rs.push_back({std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + len), static_cast<uint64_t>(i), 0});
  }
  return rs;
}

inline void expect_equal_outputs(const std::vector<GenerationOutput>& got, const std::vector<GenerationOutput>& want,
                          const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].new_ids, want[i].new_ids) << what << ": request " << i;
    EXPECT_EQ(got[i].stopped, want[i].stopped) << what << ": request " << i;
  }
}

}  // namespace qad::model
