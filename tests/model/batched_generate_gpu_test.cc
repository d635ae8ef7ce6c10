// Generation on CUDA: the engine (masked SDPA decode, on-device sampling and stop tests) against the
// cache-free reference loop on the GPU, and the same random streams on CPU and GPU.
#include "common/test_util.h"
#include "model/generate_test_util.h"

namespace qad::model {
namespace {

TEST(BatchedGenerateGpu, GreedyAndSampledEqualTheReferenceLoop) {
  QAD_REQUIRE_GPU();
  for (const auto& [arch, tied] : std::vector<std::pair<std::string, bool>>{{"LlamaForCausalLM", false},
                                                                             {"Qwen3ForCausalLM", true}}) {
    SCOPED_TRACE(arch);
    auto lm = tiny_model(arch, tied, 21);
    lm->to(torch::kCUDA);
    auto requests = random_requests(9, 22);
    BatchedGenerateOptions o;
    o.max_new_tokens = 20;
    o.stop_ids = {7, 19, 33};
    o.max_slots = 4;
    o.check_every = 3;
    for (bool greedy : {true, false}) {
      o.sampling = {.greedy = greedy, .temperature = 1.2, .top_k = 50, .top_p = 0.95, .seed = 3};
      std::vector<GenerationOutput> want;
      for (const auto& r : requests) want.push_back(reference_generate(lm, r, o));
      expect_equal_outputs(generate_batched(lm, requests, o), want, greedy ? "greedy" : "sampled");
    }
  }
}

TEST(BatchedGenerateGpu, StreamsAndSamplesAreTheSameOnCpuAndGpu) {
  QAD_REQUIRE_GPU();
  std::vector<int64_t> keys, steps;
  for (uint64_t i = 0; i < 1000; ++i) {
    keys.push_back(static_cast<int64_t>(stream_key(77, i, i % 5)));
    steps.push_back(static_cast<int64_t>(i * 31));
  }
  auto k = torch::tensor(keys, torch::kLong), s = torch::tensor(steps, torch::kLong);
  EXPECT_TRUE(torch::equal(stream_uniforms(k, s), stream_uniforms(k.cuda(), s.cuda()).cpu()));
  // Sampling a tiny FP32 model on either device gives the same tokens (its logits agree to ~1e-6).
  auto lm = tiny_model("Qwen3ForCausalLM", true, 23);
  auto requests = random_requests(6, 24);
  BatchedGenerateOptions o;
  o.max_new_tokens = 12;
  o.sampling = {.greedy = false, .temperature = 0.9, .seed = 11};
  auto cpu = generate_batched(lm, requests, o);
  lm->to(torch::kCUDA);
  expect_equal_outputs(generate_batched(lm, requests, o), cpu, "cuda vs cpu");
}

}  // namespace
}  // namespace qad::model
