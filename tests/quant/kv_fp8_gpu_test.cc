// GPU: the FP8 KV cache on CUDA. The fake quantization equals the host emulation bit for bit; the attention paths
// that only run there (fused q/k-norm + RoPE kernel, SDPA) agree with the math path and with the CPU model; and
// continuous batching with CUDA-graph decoding gives the tokens of the cache-free reference loop.
#include <gtest/gtest.h>

#include "kv_fp8_test_util.h"
#include "model/batched_generate.h"
#include "nvfp4/fp8.h"

namespace qad::testing {
namespace {

TEST(Fp8KvGpu, FakeQuantOnCudaEqualsTheHostEmulation) {
  QAD_REQUIRE_GPU();
  auto x = probe_values();
  for (float scale : {1.0f, 0.0123f, 3.7f}) {
    for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      SCOPED_TRACE(fmt::format("scale {} dtype {}", scale, c10::toString(dtype)));
      auto xd = (x * scale).to(dtype);
      auto got = nvfp4::fp8_fake_quantize(xd.cuda(), scalar_tensor(scale).cuda()).cpu();
      EXPECT_TRUE(same_bits(got, reference_fp8(xd, scale)));
    }
  }
}

TEST(Fp8KvGpu, FusedAndSdpaPathsAndGraphDecodingAgree) {
  QAD_REQUIRE_GPU();
  const torch::Device cuda(torch::kCUDA);
  for (const char* arch : {"Qwen3ForCausalLM", "LlamaForCausalLM"}) {
    SCOPED_TRACE(arch);
    auto cpu = kv_only_model(arch, 61);
    auto lm = kv_only_model(arch, 61);
    lm->to(cuda);
    auto ids = torch::randint(0, 96, {2, 20}, seeded_generator(62));
    torch::NoGradGuard ng;
    model::ForwardOptions fused;  // kAuto: the fused kernels and SDPA on CUDA
    model::ForwardOptions plain;
    plain.fused_kernels = model::FusedKernels::kOff;
    plain.attention = model::AttentionBackend::kMath;
    auto a = lm->forward(ids.to(cuda), fused).logits.cpu();
    auto b = lm->forward(ids.to(cuda), plain).logits.cpu();
    auto c = cpu->forward(ids).logits;
    EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-4)) << (a - b).abs().max().item<float>();
    EXPECT_TRUE(torch::allclose(a, c, 1e-4, 1e-4)) << (a - c).abs().max().item<float>();
    auto requests = model::random_requests(6, 63);
    model::BatchedGenerateOptions o;
    o.max_new_tokens = 16;
    o.max_slots = 3;
    std::vector<model::GenerationOutput> want;
    for (const auto& r : requests) want.push_back(model::reference_generate(lm, r, o));
    model::GenerateStats stats;
    model::expect_equal_outputs(model::generate_batched(lm, requests, o, &stats), want, "cuda graphs");
    EXPECT_GT(stats.graph_replays, 0) << stats.graph_failure;
  }
}

}  // namespace
}  // namespace qad::testing
