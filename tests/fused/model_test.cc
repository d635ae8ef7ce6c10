// The decoder with the fused kernels against the same decoder with them switched off (FusedKernels::kOff: the
// unfused ops), on tiny random Qwen3 and Llama models with NVFP4 fake quantization calibrated: the fused path must
// actually replace the Linears' own input quantization, and give the same logits and gradients within the
// tolerance of an FP32 reduction order (the RMSNorm rstd) seen through FP4 rounding. Built twice: test_fused_model
// (cpu: FP32, FusedKernels::kAlways, the reference loops) and test_fused_model_gpu (gpu: BF16, the CUDA kernels;
// skips where there is no GPU).
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "fused/add_gather_rows.h"
#include "fused/unfused.h"
#include "model/causal_lm.h"
#include "model/hidden_rows.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"

namespace qad::model {
namespace {

using nlohmann::json;

#ifdef QAD_FUSED_MODEL_GPU
constexpr bool kGpu = true;
#else
constexpr bool kGpu = false;
#endif
const torch::Device kDevice = kGpu ? torch::kCUDA : torch::kCPU;
const torch::ScalarType kDtype = kGpu ? torch::kBFloat16 : torch::kFloat32;
const FusedKernels kFused = kGpu ? FusedKernels::kAuto : FusedKernels::kAlways;

#define REQUIRE_DEVICE()      \
  do {                        \
    if (kGpu) QAD_REQUIRE_GPU(); \
  } while (0)

json tiny_config(const std::string& arch) {
  // head_dim 64, hidden 256: sizes the kernels take (multiples of 16; head_dim/2 a power-of-two of vectors).
  json j = {{"architectures", {arch}}, {"vocab_size", 128}, {"hidden_size", 256}, {"intermediate_size", 512},
            {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6},
            {"max_position_embeddings", 256}, {"tie_word_embeddings", false}, {"dtype", "bfloat16"}};
  if (arch == "Qwen3ForCausalLM") j["head_dim"] = 64;
  return j;
}

CausalLM random_model(const json& j, uint64_t salt) {
  CausalLM lm(parse_config(j, "tiny"));
  auto gen = qad::testing::seeded_generator(salt);
  {
    torch::NoGradGuard g;
    for (auto& [name, p] : lm->hf_tensors()) {
      auto r = torch::randn(p.sizes(), gen);
      p.copy_(name.ends_with("norm.weight") ? 1 + 0.1 * r : 0.1 * r);
    }
  }
  lm->to(kDevice, kDtype);
  return lm;
}

// Counts the calls of input() that the fused path should make unnecessary.
struct CountingHook : quant::NvFp4LinearQuant {
  using NvFp4LinearQuant::NvFp4LinearQuant;
  torch::Tensor input(const torch::Tensor& x) override {
    ++calls;
    return NvFp4LinearQuant::input(x);
  }
  int calls = 0;
};

struct Quantized {
  CausalLM lm{nullptr};
  std::vector<std::shared_ptr<CountingHook>> hooks;
};

Quantized quantized_model(const std::string& arch, torch::Tensor ids) {
  Quantized q{random_model(tiny_config(arch), 31), {}};
  quant::QuantConfig cfg;
  quant::apply_nvfp4(q.lm, cfg);
  quant::calibrate(q.lm, [&](const quant::BatchSink& sink) { sink(ids, torch::Tensor()); }, cfg);
  // Same quantizer state, counting hooks.
  for (auto l : q.lm->linears()) {
    auto* h = quant::nvfp4_hook(l);
    if (h == nullptr) continue;
    auto c = std::make_shared<CountingHook>(h->module());
    c->input_amax = h->input_amax;
    c->weight_amax = h->weight_amax;
    c->ste = h->ste;
    c->quantize_inputs = h->quantize_inputs;
    l->quant = c;
    q.hooks.push_back(c);
  }
  return q;
}

std::vector<torch::Tensor> grads_of(CausalLM& lm) {
  std::vector<torch::Tensor> g;
  for (auto& p : lm->parameters()) {
    g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    p.mutable_grad() = torch::Tensor();
  }
  return g;
}

class FusedModel : public ::testing::TestWithParam<const char*> {};

TEST_P(FusedModel, SameLogitsAndGradientsAsTheUnfusedOps) {
  REQUIRE_DEVICE();
  auto gen = qad::testing::seeded_generator(32);
  auto ids = torch::randint(0, 128, {2, 48}, gen);
  auto q = quantized_model(GetParam(), ids);
  auto targets = torch::randint(0, 128, {2 * 48}, gen).to(kDevice);

  auto run = [&](bool fused, bool checkpoint) {
    ForwardOptions o;
    o.fused_kernels = fused ? kFused : FusedKernels::kOff;
    o.checkpoint_layers = checkpoint;
    for (auto& h : q.hooks) h->calls = 0;
    auto logits = q.lm->forward(ids, o).logits;
    torch::nn::functional::cross_entropy(logits.reshape({-1, 128}).to(torch::kFloat32), targets).backward();
    int calls = 0;
    for (auto& h : q.hooks) {
      const auto& m = h->module();
      if (!m.ends_with("o_proj") && !m.ends_with("lm_head")) calls += h->calls;
    }
    return std::make_tuple(logits.detach(), grads_of(q.lm), calls);
  };
  auto [ref_logits, ref_grads, ref_calls] = run(false, false);
  auto [logits, grads, calls] = run(true, false);
  EXPECT_GT(ref_calls, 0);
  EXPECT_EQ(calls, 0) << "the fused norms and SwiGLU should have quantized every q/k/v/gate/up/down input";
  // Logits through two layers of FP4 activations: an rstd one ulp apart can move an activation by one FP4
  // step; the tolerance is far below what a wrong kernel gives (an unquantized or unnormalised path: > 0.3).
  EXPECT_LE(fused::testing::normalised_error(logits, ref_logits), 0.05);
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_LE(fused::testing::normalised_error(grads[i], ref_grads[i]), 0.1) << "parameter " << i;
  }
  // Activation checkpointing recomputes the fused layer: identical results.
  auto [ck_logits, ck_grads, ck_calls] = run(true, true);
  EXPECT_TRUE(qad::testing::same_bits(ck_logits, logits));
  EXPECT_EQ(ck_calls, 0);
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_LE(fused::testing::normalised_error(ck_grads[i], grads[i]), 1e-2) << "parameter " << i;
  }
}

TEST_P(FusedModel, UnquantizedTeacherForwardMatches) {
  REQUIRE_DEVICE();
  auto gen = qad::testing::seeded_generator(33);
  auto lm = random_model(tiny_config(GetParam()), 34);
  auto ids = torch::randint(0, 128, {3, 40}, gen);
  torch::NoGradGuard no_grad;
  ForwardOptions off;
  off.fused_kernels = FusedKernels::kOff;
  auto ref = lm->forward(ids, off).logits;
  ForwardOptions on;
  on.fused_kernels = kFused;
  auto out = lm->forward(ids, on).logits;
  EXPECT_LE(fused::testing::normalised_error(out, ref), 1e-2);
}

// The CKA rows each decoder layer gathers in its last residual add (on the GPU the fused add_gather_rows kernel)
// against the same rows taken from the full hidden states with index_select: the same rows and logits bit for bit,
// and the same gradients up to the order in which the rows' gradient joins the residual stream's.
TEST_P(FusedModel, TappedRowsAreTheFullStatesRows) {
  REQUIRE_DEVICE();
  auto gen = qad::testing::seeded_generator(35);
  auto ids = torch::randint(0, 128, {2, 48}, gen);
  auto q = quantized_model(GetParam(), ids);
  auto rows = torch::randperm(96, gen, torch::kLong).narrow(0, 0, 20).to(kDevice);
  auto weights = torch::randn({20, 256}, gen).to(kDevice, kDtype);
  auto run = [&](bool tapped) {
    ForwardOptions o;
    o.fused_kernels = kFused;
    o.return_hidden = true;
    if (tapped) o.hidden_rows = rows;
    auto out = q.lm->forward(ids, o);
    std::vector<torch::Tensor> taken;
    auto loss = out.logits.to(torch::kFloat32).square().mean();
    for (const auto& [name, h] : out.hidden) {
      taken.push_back(tapped ? h : h.reshape({-1, 256}).index_select(0, rows));
      loss = loss + (taken.back() * weights).sum().to(torch::kFloat32) * 1e-3;
    }
    loss.backward();
    for (auto& t : taken) t = t.detach().clone();
    return std::make_tuple(out.logits.detach(), taken, grads_of(q.lm));
  };
  auto [ref_logits, ref_rows, ref_grads] = run(false);
  const auto before = tap_rows_backward_counts();
  auto [logits, taken, grads] = run(true);
  const auto after = tap_rows_backward_counts();
  // Both layers' rows went into their gradients in place (the final norm's may be copied: see decoder_test.cc).
  EXPECT_GE(after.in_place - before.in_place, 2);
  EXPECT_EQ(after.in_place - before.in_place + after.copied - before.copied, 3);
  EXPECT_TRUE(qad::testing::same_bits(logits, ref_logits));
  ASSERT_EQ(taken.size(), ref_rows.size());
  for (size_t i = 0; i < taken.size(); ++i) EXPECT_TRUE(qad::testing::same_bits(taken[i], ref_rows[i])) << i;
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_GT(ref_grads[i].abs().sum().item<double>(), 0.0) << "parameter " << i;
    // The rows' gradient may join the others in another order: a BF16 ulp at most where they meet.
    EXPECT_LE(fused::testing::normalised_error(grads[i], ref_grads[i]), kGpu ? 2e-2 : 1e-5) << "parameter " << i;
  }
}

// The row -> slot map of the fused taps: a forward returns it (CUDA), and a second forward over the same rows that
// is given it (the student after the teacher) uses it as it is and gets the same rows and logits; a map that does
// not fit the batch is not used.
TEST_P(FusedModel, SecondForwardReusesTheSlotMap) {
  REQUIRE_DEVICE();
  auto gen = qad::testing::seeded_generator(36);
  auto ids = torch::randint(0, 128, {2, 48}, gen);
  auto q = quantized_model(GetParam(), ids);
  auto rows = torch::randperm(96, gen, torch::kLong).narrow(0, 0, 20).to(kDevice);
  torch::NoGradGuard ng;
  ForwardOptions o;
  o.fused_kernels = kFused;
  o.return_hidden = true;
  o.hidden_rows = rows;
  auto first = q.lm->forward(ids, o);
  if (!kGpu) {
    EXPECT_FALSE(first.hidden_row_slots.defined());  // the CPU takes ATen's add and gather: no map
    return;
  }
  ASSERT_TRUE(first.hidden_row_slots.defined());
  EXPECT_TRUE(torch::equal(first.hidden_row_slots, fused::slots_of_rows(rows, 96)));
  o.hidden_row_slots = first.hidden_row_slots;
  auto second = q.lm->forward(ids, o);
  EXPECT_TRUE(second.hidden_row_slots.is_same(first.hidden_row_slots));
  EXPECT_TRUE(qad::testing::same_bits(second.logits, first.logits));
  ASSERT_EQ(second.hidden.size(), first.hidden.size());
  for (size_t i = 0; i < first.hidden.size(); ++i) {
    EXPECT_TRUE(qad::testing::same_bits(second.hidden[i].second, first.hidden[i].second)) << i;
  }
  o.hidden_row_slots = fused::slots_of_rows(rows, 192);  // a map for a batch of another shape
  auto third = q.lm->forward(ids, o);
  EXPECT_FALSE(third.hidden_row_slots.is_same(o.hidden_row_slots));
  EXPECT_TRUE(torch::equal(third.hidden_row_slots, first.hidden_row_slots));
}

// A map the row chooser built with the rows (hidden_rows_source, loss::select_cka_tokens on the host) is used as it
// is: the forward returns that tensor, and the rows and logits are those of a forward given the rows alone.
TEST_P(FusedModel, SlotMapFromTheRowChooserIsUsed) {
  REQUIRE_DEVICE();
  auto gen = qad::testing::seeded_generator(37);
  auto ids = torch::randint(0, 128, {2, 48}, gen);
  auto q = quantized_model(GetParam(), ids);
  auto rows = std::get<0>(torch::randperm(96, gen, torch::kLong).narrow(0, 0, 20).sort()).to(kDevice);
  torch::NoGradGuard ng;
  ForwardOptions given;
  given.fused_kernels = kFused;
  given.return_hidden = true;
  given.hidden_rows = rows;
  auto ref = q.lm->forward(ids, given);
  auto slots = fused::slots_of_rows(rows, 96);
  ForwardOptions chosen;
  chosen.fused_kernels = kFused;
  chosen.return_hidden = true;
  chosen.hidden_rows_source = [&] { return ChosenRows{rows, slots}; };
  auto out = q.lm->forward(ids, chosen);
  EXPECT_TRUE(torch::equal(out.hidden_rows, rows));
  if (kGpu) {
    EXPECT_TRUE(out.hidden_row_slots.is_same(slots));
  }
  EXPECT_TRUE(qad::testing::same_bits(out.logits, ref.logits));
  ASSERT_EQ(out.hidden.size(), ref.hidden.size());
  for (size_t i = 0; i < ref.hidden.size(); ++i) {
    EXPECT_TRUE(qad::testing::same_bits(out.hidden[i].second, ref.hidden[i].second)) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FusedModel, ::testing::Values("Qwen3ForCausalLM", "LlamaForCausalLM"));

}  // namespace
}  // namespace qad::model
