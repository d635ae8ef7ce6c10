// `qad distill --plan`'s inputs and arithmetic on the CPU: parameter counts and Linear shapes from config.json equal
// the loaded fixture models' (every architecture: Llama, Qwen2, Qwen3, Qwen3-MoE, NemotronH hybrid and MoE), the
// fake-quantized weight count equals what apply_nvfp4 selects, and the plan's components for the Qwen3-8B shape
// equal their closed forms (offload, ZeRO-1, fully sharded, checkpointing). The activation formula against a measured peak needs
// the GPU: bench_train prints the plan beside its measurement.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "common/test_util.h"
#include "model/causal_lm.h"
#include "model/param_count.h"
#include "quant/quantize_model.h"
#include "train/memory_plan.h"
#include "train/moe_training.h"
#include "train/student.h"

namespace qad::train {
namespace {

namespace fs = std::filesystem;
using qad::testing::shared_dir;
using qad::testing::source_dir;

std::vector<fs::path> model_dirs() {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(source_dir() / "tests/fixtures/models")) {
    if (fs::exists(e.path() / "config.json")) out.push_back(e.path());
  }
  for (const char* m : {"qwen3-16m-teacher", "stories260K"}) {
    if (fs::exists(shared_dir() / "models" / m / "config.json")) out.push_back(shared_dir() / "models" / m);
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(ParamCount, EqualsTheLoadedModelsForEveryFixture) {
  const auto dirs = model_dirs();
  ASSERT_GE(dirs.size(), 10u);
  for (const auto& dir : dirs) {
    SCOPED_TRACE(dir.string());
    auto lm = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
    const auto n = model::count_parameters(model::load_config(dir));
    int64_t total = 0, largest = 0, frozen = 0;
    for (const auto& [name, t] : lm->hf_tensors()) {
      total += t.numel();
      largest = std::max(largest, t.numel());
    }
    for (const auto& [name, t] : trainable_tensors(lm, false)) frozen += t.numel();
    frozen = total - frozen;
    int64_t routers = 0;
    for (const auto& [name, t] : lm->hf_tensors()) {
      if (name.ends_with(".mlp.gate.weight") || name.ends_with(".mixer.gate.weight")) routers += t.numel();
    }
    EXPECT_EQ(n.total, total);
    EXPECT_EQ(n.largest, largest);
    EXPECT_EQ(n.frozen, frozen);
    EXPECT_EQ(n.routers, routers);
    // The Linears: the same list, order, shapes and biases as CausalLM::linears().
    const auto shapes = model::linear_shapes(lm->config());
    const auto linears = lm->linears();
    ASSERT_EQ(shapes.size(), linears.size());
    for (size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_EQ(shapes[i].name, linears[i]->name());
      EXPECT_EQ(shapes[i].in_features, linears[i]->weight.size(1)) << shapes[i].name;
      EXPECT_EQ(shapes[i].out_features, linears[i]->weight.size(0)) << shapes[i].name;
      EXPECT_EQ(shapes[i].bias, linears[i]->bias.defined()) << shapes[i].name;
    }
  }
}

int64_t selected_elements(model::CausalLM& lm, const quant::QuantConfig& q) {
  std::map<std::string, int64_t> numel;
  for (const auto& l : lm->linears()) numel[l->name()] = l->weight.numel();
  int64_t n = 0;
  for (const auto& name : quant::apply_nvfp4(lm, q)) n += numel.at(name);
  return n;
}

TEST(ParamCount, FakeQuantizedWeightsAreWhatApplyNvfp4Selects) {
  for (const auto& dir : model_dirs()) {
    SCOPED_TRACE(dir.string());
    auto lm = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
    TrainConfig cfg;
    EXPECT_EQ(fake_quantized_weight_elements(lm->config(), cfg), selected_elements(lm, cfg.quant.options));
    cfg.quant.options.exclude.push_back("*down_proj");
    cfg.quant.options.fp8_layers = {"*o_proj"};
    EXPECT_EQ(fake_quantized_weight_elements(lm->config(), cfg), selected_elements(lm, cfg.quant.options));
    cfg.method = Method::kPretrain;
    EXPECT_EQ(fake_quantized_weight_elements(lm->config(), cfg), 0);
  }
}

model::ModelConfig qwen3_8b() {
  return model::parse_config(
      {{"architectures", {"Qwen3ForCausalLM"}}, {"model_type", "qwen3"}, {"vocab_size", 151936}, {"hidden_size", 4096},
       {"intermediate_size", 12288}, {"num_hidden_layers", 36}, {"num_attention_heads", 32},
       {"num_key_value_heads", 8}, {"head_dim", 128}, {"max_position_embeddings", 40960}, {"rms_norm_eps", 1e-6},
       {"tie_word_embeddings", false}, {"rope_theta", 1000000.0}, {"torch_dtype", "bfloat16"}},
      "Qwen3-8B");
}

double gpu_of(const MemoryPlan& p, const std::string& prefix) {
  for (const auto& r : p.rows) {
    if (r.what.rfind(prefix, 0) == 0) return r.gpu;
  }
  ADD_FAILURE() << "no row " << prefix;
  return 0;
}

TEST(MemoryPlan, Qwen3_8BComponentsAreTheirClosedForms) {
  const auto c = qwen3_8b();
  const double P = 8190735360.0;  // Qwen3-8B's published count: 8.19 B
  EXPECT_EQ(model::count_parameters(c).total, static_cast<int64_t>(P));
  TrainConfig cfg;
  cfg.data.batch_size = 4;
  cfg.data.seq_len = 2048;
  PlanSettings s;
  s.quantized_weight_elements = fake_quantized_weight_elements(c, cfg);
  const double layer = 4096.0 * 4096 * 2 + 4096.0 * 1024 * 2 + 3 * 4096.0 * 12288;  // q, o; k, v; gate, up, down
  EXPECT_EQ(s.quantized_weight_elements, static_cast<int64_t>(36 * layer));     // lm_head stays BF16
  const auto p = plan_memory(c, cfg, s);
  EXPECT_DOUBLE_EQ(gpu_of(p, "teacher weights"), 2 * P);
  EXPECT_DOUBLE_EQ(gpu_of(p, "student weights"), 2 * P);
  EXPECT_DOUBLE_EQ(gpu_of(p, "fake-quantized"), 2 * 36 * layer);
  EXPECT_DOUBLE_EQ(gpu_of(p, "FP32 master"), 12 * P);
  EXPECT_DOUBLE_EQ(gpu_of(p, "gradients"), 2 * P);
  // Per token and layer: 4 H + 4 q + 3 kv + 3 I BF16 elements (memory_plan.cc lists them).
  const double units = 4 * 4096.0 + 4 * 4096.0 + 3 * 1024.0 + 3 * 12288.0;
  EXPECT_DOUBLE_EQ(gpu_of(p, "activations"), 2 * 8192.0 * 36 * units);
  EXPECT_DOUBLE_EQ(gpu_of(p, "loss head"), 3 * 2048.0 * 151936 * 2 + 4 * 151936.0 * 4096 + 2 * 8192.0 * 4096 * 2);
  EXPECT_DOUBLE_EQ(p.peak, p.step_peak);  // the gradients (update) are smaller than the activations
  EXPECT_DOUBLE_EQ(p.update_peak, 2 * P + 2 * P + 2 * 36 * layer + 12 * P + 2 * P);
  // It does not fit an H200 (~150 GB) and suggests offloading, which does.
  const auto text = format_plan(p, c, cfg, s, 150e9, 137e9);
  EXPECT_NE(text.find("DOES NOT FIT"), std::string::npos) << text;
  EXPECT_NE(text.find("--offload optimizer"), std::string::npos) << text;

  cfg.optim.offload = "optimizer";
  const auto off = plan_memory(c, cfg, s);
  EXPECT_DOUBLE_EQ(off.host, 12 * P);
  EXPECT_DOUBLE_EQ(off.peak, p.peak - 12 * P + 3 * 3 * 4 * double{1 << 24});  // minus the state, plus the staging
  const auto off_text = format_plan(off, c, cfg, s, 150e9, 137e9);
  EXPECT_NE(off_text.find("FITS"), std::string::npos) << off_text;
  EXPECT_EQ(off_text.find("DOES NOT FIT"), std::string::npos) << off_text;

  cfg.run.activation_checkpointing = true;
  const auto ck = plan_memory(c, cfg, s);
  EXPECT_DOUBLE_EQ(gpu_of(ck, "activations"), 2 * 8192.0 * (36 * 4096 + units));
  cfg.run.activation_checkpointing = false;
  cfg.optim.offload = "none";

  s.world_size = 4;  // ZeRO-1: a quarter of the state, and the gradient buffer is held throughout
  const auto z = plan_memory(c, cfg, s);
  EXPECT_DOUBLE_EQ(gpu_of(z, "FP32 master"), 3 * P);
  EXPECT_DOUBLE_EQ(z.step_peak, p.step_peak - 9 * P + 2 * P);

  // Fully sharded on 8 ranks (docs/dist.md): the decoder layers 1/8 and the root unit (embeddings, lm_head, final
  // norm) whole, for both models; state and FP32 gradient shard 1/8; with checkpointing two gathered layers each.
  s.world_size = 8;
  s.zero = s.fully_sharded = true;
  cfg.run.activation_checkpointing = true;
  const auto f = plan_memory(c, cfg, s);
  const double root = 2 * 151936.0 * 4096 + 4096;
  const double per_layer = (P - root) / 36;
  EXPECT_DOUBLE_EQ(gpu_of(f, "teacher weights"), 2 * ((P - root) / 8 + root));
  EXPECT_DOUBLE_EQ(gpu_of(f, "student weights"), 2 * ((P - root) / 8 + root));
  EXPECT_DOUBLE_EQ(gpu_of(f, "student: 3 gathered layers"), 3 * 2 * (per_layer + layer));
  EXPECT_DOUBLE_EQ(gpu_of(f, "loading"), 2 * 2 * P);
  EXPECT_DOUBLE_EQ(f.startup_peak, 4 * P);
  EXPECT_DOUBLE_EQ(f.whole_student_peak, f.resident + 2 * P);
  EXPECT_DOUBLE_EQ(f.peak, std::max({f.step_peak, f.update_peak, f.startup_peak, f.whole_student_peak}));
  EXPECT_DOUBLE_EQ(gpu_of(f, "FP32 master"), 12 * P / 8);
  EXPECT_DOUBLE_EQ(gpu_of(f, "gradients (FP32 shard"), 4 * P / 8 + 2 * root);
  auto z1 = s;
  z1.fully_sharded = false;  // ZeRO-1 on as many ranks keeps both models and the gradients whole: 4P + 2P more
  // Loading (both models whole, 4P) bounds the fully sharded peak from below; the step itself is far under ZeRO-1's.
  EXPECT_LT(f.step_peak, plan_memory(c, cfg, z1).step_peak - 4 * P);
  const auto f_text = format_plan(f, c, cfg, s, 80e9, std::nullopt);
  EXPECT_NE(f_text.find("8 GPUs (fully sharded, --zero 3)"), std::string::npos) << f_text;
  EXPECT_NE(f_text.find("not yet checked against a measured peak"), std::string::npos) << f_text;
  // From a teacher cache (top-64): no teacher weights, the logits path without the teacher's logits, the targets.
  {
    auto cc = cfg;
    cc.run.activation_checkpointing = false;
    cc.run.teacher_cache = "cache";
    PlanSettings one;
    one.quantized_weight_elements = s.quantized_weight_elements;
    one.cache_top_k = 64;
    const auto q = plan_memory(c, cc, one);
    for (const auto& r : q.rows) EXPECT_EQ(r.what.find("teacher weights"), std::string::npos) << r.what;
    EXPECT_DOUBLE_EQ(gpu_of(q, "loss head (logits path)"), 2 * 8192.0 * 151936 * 2 + 4 * 4096.0 * 151936 * 4);
    EXPECT_DOUBLE_EQ(gpu_of(q, "teacher targets from the cache (top-64)"), 8192.0 * 64 * (2 + 4 + 8) + 8192.0 * 4);
    EXPECT_NE(format_plan(q, c, cc, one, std::nullopt, std::nullopt).find("no teacher model"), std::string::npos);
  }
  // Without checkpointing every gathered student layer stays alive until its backward.
  cfg.run.activation_checkpointing = false;
  const auto g = plan_memory(c, cfg, s);
  EXPECT_DOUBLE_EQ(gpu_of(g, "student: every layer gathered"), 2 * 36 * (per_layer + layer));
}

TEST(MemoryPlan, ReportReadsOnlyTheConfigAndNamesAMissingOne) {
  TrainConfig cfg;
  cfg.run.teacher = (source_dir() / "tests/fixtures/models/qwen3_qknorm_headdim_tied").string();
  cfg.run.device = "cpu";
  const auto text = plan_report(cfg, {}, 80.0);
  EXPECT_NE(text.find("Qwen3ForCausalLM"), std::string::npos) << text;
  EXPECT_NE(text.find("FITS"), std::string::npos) << text;
  cfg.run.teacher = (source_dir() / "tests/fixtures").string();
  try {
    plan_report(cfg, {}, 80.0);
    FAIL() << "a directory without config.json was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qad::train
