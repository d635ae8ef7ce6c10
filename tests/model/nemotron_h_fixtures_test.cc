// NemotronH against transformers 5.17 (tests/fixtures/models/nemotronh_*, tools/make_nemotronh_fixtures.py): the
// routing of every MoE block, greedy generation (full recompute, and generate() with the KV cache and Mamba
// states) against model.generate, both config forms and both tensor layouts (NVIDIA's / transformers' in-memory)
// loading to the same model, and save -> load bit-exact. Logits and every block's hidden
// state are checked for these fixtures like all others by fixtures_test.cc.
#include <unistd.h>

#include "common/test_util.h"
#include "io/safetensors_torch.h"
#include "model/causal_lm.h"
#include "model/generate.h"
#include "model/nemotron_h.h"
#include "util/atomic_file.h"
#include "util/remove_tree.h"

namespace qad::model {
namespace {
namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return qad::testing::source_dir() / "tests/fixtures/models" / name; }

#define QAD_REQUIRE_FIXTURE(name)                                                                              \
  do {                                                                                                         \
    if (!fs::exists(fixture(name) / "reference.safetensors"))                                                  \
      GTEST_SKIP() << name << " not made yet (bash scripts/gpu_nemotronh_fixtures.sh on the GPU machine)";     \
  } while (0)

// The reference, with single_chunk.* (present only where transformers' chunked scan is wrong) in place of the rest.
std::map<std::string, torch::Tensor> reference(const std::string& name) {
  auto list = io::read_tensors(fixture(name) / "reference.safetensors");
  std::map<std::string, torch::Tensor> ref(list.begin(), list.end());
  for (const auto& [k, t] : list) {
    if (k.starts_with("single_chunk.")) ref[k.substr(std::string("single_chunk.").size())] = t;
  }
  return ref;
}

TEST(NemotronHFixtures, RoutingEqualsTransformers) {
  QAD_REQUIRE_FIXTURE("nemotronh_moe");
  auto ref = reference("nemotronh_moe");
  auto lm = CausalLM::load(fixture("nemotronh_moe"), torch::kCPU, torch::kFloat32);
  torch::NoGradGuard g;
  ForwardOptions o;
  o.return_router_logits = true;
  auto out = lm->forward(ref["input_ids"].to(torch::kLong), o);
  ASSERT_FALSE(out.router_logits.empty());
  for (const auto& [name, logits] : out.router_logits) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(ref.count("router." + name) && ref.count("router_index." + name));
    auto probs = torch::sigmoid(logits);
    EXPECT_LT((probs - ref["router." + name]).abs().max().item<double>(), 1e-5);
    const int64_t layer = std::stoll(name.substr(std::string("layers.").size()));
    auto& moe = *lm->model->block_list[static_cast<size_t>(layer)]->moe;
    auto r = group_topk_route(logits, moe.correction_bias, *lm->config().hybrid->moe);
    EXPECT_TRUE(torch::equal(r.experts, ref["router_index." + name]));
    EXPECT_LT((r.weights - ref["router_weight." + name]).abs().max().item<double>(), 1e-5);
  }
}

// Greedy decoding by full recompute (no cache): what model.generate returns with its hybrid cache.
torch::Tensor greedy(CausalLM& lm, torch::Tensor ids, int64_t new_tokens) {
  torch::NoGradGuard g;
  for (int64_t i = 0; i < new_tokens; ++i) {
    ForwardOptions o;
    o.logits_to_keep = 1;
    auto next = lm->forward(ids, o).logits.select(1, 0).argmax(-1, /*keepdim=*/true);
    ids = torch::cat({ids, next}, 1);
  }
  return ids;
}

TEST(NemotronHFixtures, GreedyGenerationEqualsTransformers) {
  for (const char* name : {"nemotronh_hybrid", "nemotronh_moe"}) {
    SCOPED_TRACE(name);
    QAD_REQUIRE_FIXTURE(name);
    auto ref = reference(name);
    ASSERT_TRUE(ref.count("generate.output")) << "the fixture was made without generation";
    auto lm = CausalLM::load(fixture(name), torch::kCPU, torch::kFloat32);
    const auto& prompt = ref["generate.prompt"];
    const int64_t n = ref["generate.output"].size(1) - prompt.size(1);
    auto got = greedy(lm, prompt.to(torch::kLong), n);
    EXPECT_TRUE(torch::equal(got, ref["generate.output"])) << got << "\nvs\n" << ref["generate.output"];
    // With the KV cache and the Mamba states (generate's hybrid path).
    std::vector<std::vector<int64_t>> prompts;
    for (int64_t r = 0; r < prompt.size(0); ++r) {
      auto row = prompt[r].contiguous();
      prompts.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
    }
    GenerateOptions g;
    g.max_new_tokens = n;
    auto res = generate(lm, prompts, g);
    for (int64_t r = 0; r < prompt.size(0); ++r) {
      auto want = ref["generate.output"][r].narrow(0, prompt.size(1), n).contiguous();
      EXPECT_EQ(res.new_ids[static_cast<size_t>(r)],
                std::vector<int64_t>(want.data_ptr<int64_t>(), want.data_ptr<int64_t>() + n)) << "row " << r;
    }
  }
}

::testing::AssertionResult same_model(CausalLM& a, CausalLM& b) {
  auto ta = a->hf_tensors(), tb = b->hf_tensors();
  if (ta.size() != tb.size()) return ::testing::AssertionFailure() << ta.size() << " vs " << tb.size() << " tensors";
  for (size_t i = 0; i < ta.size(); ++i) {
    if (ta[i].first != tb[i].first) return ::testing::AssertionFailure() << ta[i].first << " vs " << tb[i].first;
    auto r = qad::testing::same_bits(ta[i].second, tb[i].second);
    if (!r) return r << " (" << ta[i].first << ")";
  }
  if (a->config().hybrid->blocks != b->config().hybrid->blocks) return ::testing::AssertionFailure() << "blocks differ";
  return ::testing::AssertionSuccess();
}

// transformers 5.17 writes layers_block_type; *_pattern / *_nvidia hold the same models with hybrid_override_pattern
// (transformers reloads each with identical logits: hf_reload_max_abs_logit_diff).
TEST(NemotronHFixtures, BothConfigFormsLoadTheSameModel) {
  for (const auto& [a, b] : {std::pair{"nemotronh_hybrid", "nemotronh_hybrid_pattern"},
                             std::pair{"nemotronh_moe", "nemotronh_moe_nvidia"}}) {
    SCOPED_TRACE(b);
    QAD_REQUIRE_FIXTURE(a);
    QAD_REQUIRE_FIXTURE(b);
    const auto ja = load_config(fixture(a)).raw, jb = load_config(fixture(b)).raw;
    EXPECT_NE(ja.contains("hybrid_override_pattern"), jb.contains("hybrid_override_pattern")) << "same config form";
    auto la = CausalLM::load(fixture(a), torch::kCPU, torch::kFloat32);
    auto lb = CausalLM::load(fixture(b), torch::kCPU, torch::kFloat32);
    EXPECT_TRUE(same_model(la, lb));
    auto meta = io::SafetensorsFile::open(fixture(b) / "reference.safetensors")->header().metadata;
    EXPECT_EQ(meta["hf_reload_max_abs_logit_diff"], "0.0");
  }
}

// 5.17's save_pretrained writes NVIDIA's layout (backbone.*, one tensor per expert); a file written from its in-memory
// state has model.* names and stacked experts (mixer.experts.up_proj [E, I, H], down_proj [E, H, I]): same model.
TEST(NemotronHFixtures, TransformersInMemoryLayoutLoadsTheSameModel) {
  QAD_REQUIRE_FIXTURE("nemotronh_moe");
  auto lm = CausalLM::load(fixture("nemotronh_moe"), torch::kCPU, torch::kFloat32);
  std::map<std::string, std::vector<torch::Tensor>> stacks;
  io::NamedTensors tensors;
  for (const auto& [name, t] : lm->hf_tensors()) {
    auto n = name.starts_with("backbone.") ? "model." + name.substr(9) : name;
    const auto e = n.find(".experts.");
    if (e != std::string::npos) {  // "<p>.experts.<i>.<proj>.weight" -> "<p>.experts.<proj>"
      const auto rest = n.substr(e + 9);
      const auto proj = rest.substr(rest.find('.') + 1, rest.rfind('.') - rest.find('.') - 1);
      stacks[n.substr(0, e) + ".experts." + proj].push_back(t);  // experts in order 0, 1, ...
      continue;
    }
    tensors.emplace_back(n, t.contiguous());
  }
  for (auto& [n, list] : stacks) tensors.emplace_back(n, torch::stack(list, 0).contiguous());
  const auto dir = fs::temp_directory_path() / ("qad_nemotronh_stacked_" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  fs::copy_file(fixture("nemotronh_moe") / "config.json", dir / "config.json");
  io::write_tensors(dir / "model.safetensors", tensors);
  EXPECT_EQ(stacks.size(), 4u);  // two MoE blocks x up, down
  auto back = CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  EXPECT_TRUE(same_model(lm, back));
  remove_tree(dir);
}

TEST(NemotronHFixtures, SaveThenLoadIsBitExact) {
  for (const char* name : {"nemotronh_hybrid", "nemotronh_moe"}) {
    SCOPED_TRACE(name);
    QAD_REQUIRE_FIXTURE(name);
    auto lm = CausalLM::load(fixture(name), torch::kCPU, torch::kFloat32);
    const auto dir = fs::temp_directory_path() / ("qad_nemotronh_save_" + std::to_string(::getpid()) + name);
    remove_tree(dir);
    lm->save(dir);
    auto back = CausalLM::load(dir, torch::kCPU, torch::kFloat32);
    EXPECT_TRUE(same_model(lm, back));
    // time_step_limit's Infinity is written back as transformers wrote it (a bare literal, not a string).
    const auto text = read_file(dir / "config.json");
    if (load_config(fixture(name)).raw.contains("time_step_limit")) {
      EXPECT_EQ(text.find("@"), std::string::npos);
      EXPECT_NE(text.find("Infinity"), std::string::npos);
    }
    auto ref = reference(name);
    torch::NoGradGuard g;
    EXPECT_TRUE(torch::equal(lm->forward(ref["input_ids"]).logits, back->forward(ref["input_ids"]).logits));
    remove_tree(dir);
  }
}

TEST(NemotronHFixtures, TransformersRanItsTorchMambaPathOnCpuAndItsScanIsRight) {
  for (const char* name : {"nemotronh_hybrid", "nemotronh_moe"}) {
    SCOPED_TRACE(name);
    QAD_REQUIRE_FIXTURE(name);
    auto meta = io::SafetensorsFile::open(fixture(name) / "reference.safetensors")->header().metadata;
    // Made on the CPU in FP32 by 5.17 without mamba_ssm / causal_conv1d (its log: "falling back to its reference
    // PyTorch implementation"); its chunked scan agrees with one chunk, so no single_chunk.* references exist.
    EXPECT_EQ(meta["transformers"], "5.17.0");
    EXPECT_EQ(meta["device"], "cpu");
    EXPECT_EQ(meta["single_chunk_agrees"], "True");
    auto ref = reference(name);
    EXPECT_GE(ref["margin.min_dt"].item<double>(), 1.5e-3);  // the time_step_min clamp never binds in the fixture
    // The fixture script's FP64 sequential recurrence against transformers' chunked scan (block 0's mixer).
    ASSERT_TRUE(ref.count("check.scan_vs_sequential"));
    EXPECT_LT(ref["check.scan_vs_sequential"].item<double>(), 1e-4);
  }
}

}  // namespace
}  // namespace qad::model
