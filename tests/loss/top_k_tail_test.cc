// The top-k KL with a tail category (KLOptions::top_k_tail): value and gradient against the formula written out in
// FP64 here (the tail masses summed directly over the tail, gradient by autograd of that expression), the closed-form
// gradient, k = V and an empty teacher tail as the full KL, tiny tails (FP64 and FP32), BF16 inputs, the live
// call against the teacher's top-k and logsumexp given from outside (bit for bit), and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/test_util.h"
#include "loss/gradcheck.h"
#include "loss/logit_batch.h"
#include "loss/logit_losses.h"
#include "util/error.h"

namespace {
using namespace qad::loss;
using qad::testing::all_close;
using qad::testing::same_bits;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

// T^2 * mean over valid tokens of KL over the categories S (the teacher's top k) and the tail, from the formula:
// p_v, q_v the full-vocabulary softmaxes at T, p_tail and q_tail their sums over the ids outside S.
// `ids` undefined: S = the teacher's k largest (inputs without ties).
torch::Tensor reference_tail_kl(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& mask, int64_t k,
                                double T, torch::Tensor ids = {}) {
  if (!ids.defined()) ids = std::get<1>(t.topk(k, -1));
  auto log_p = torch::log_softmax(t / T, -1), log_q = torch::log_softmax(s / T, -1);
  auto outside = torch::ones_like(t, torch::TensorOptions().dtype(torch::kBool)).scatter_(-1, ids, false);
  auto log_p_s = log_p.gather(-1, ids), log_q_s = log_q.gather(-1, ids);
  auto p_tail = (log_p.exp() * outside).sum(-1), q_tail = (log_q.exp() * outside).sum(-1);
  auto tail = torch::where(p_tail > 0, p_tail * (p_tail.log() - q_tail.log()), torch::zeros_like(p_tail));
  auto per_token = (log_p_s.exp() * (log_p_s - log_q_s)).sum(-1) + tail;
  auto m = mask.to(torch::kFloat64);
  return T * T * (per_token * m).sum() / m.sum();
}

// The full-vocabulary KL, T^2 * mean KL(softmax(t/T) || softmax(s/T)).
torch::Tensor reference_full_kl(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& mask, double T) {
  auto log_q = torch::log_softmax(s / T, -1), log_p = torch::log_softmax(t / T, -1);
  auto p = log_p.exp();
  auto per_token = torch::where(p > 0, p * (log_p - log_q), torch::zeros_like(p)).sum(-1);
  auto m = mask.to(torch::kFloat64);
  return T * T * (per_token * m).sum() / m.sum();
}

// The reference's value and its gradient w.r.t. s by autograd (FP64).
std::pair<double, torch::Tensor> reference_with_grad(const torch::Tensor& s, const torch::Tensor& t,
                                                     const torch::Tensor& mask, int64_t k, double T,
                                                     const torch::Tensor& ids = {}) {
  auto leaf = s.to(torch::kFloat64).detach().requires_grad_(true);
  auto v = reference_tail_kl(leaf, t.to(torch::kFloat64), mask, k, T, ids);
  v.backward();
  return {v.item<double>(), leaf.grad()};
}

using Batch = LogitBatch;
Batch random_batch(uint64_t salt, int64_t b = 2, int64_t n = 5, int64_t v = 13) {
  return random_logit_batch(salt, b, n, v);
}

// Logits whose first k entries (random in [0, 1]) hold 1 - tail of the probability and whose other entries (around
// one value, a little noise) hold `tail`: the top k are the first k ids.
torch::Tensor with_tail(int64_t b, int64_t n, int64_t v, int64_t k, double tail, uint64_t salt) {
  auto gen = qad::testing::seeded_generator(salt);
  auto head = torch::rand({b, n, k}, gen, kF64);
  auto noise = torch::rand({b, n, v - k}, gen, kF64) * 0.5;
  // sum over the tail of exp(c + noise) = tail / (1 - tail) * sum over the head of exp(head)
  auto c = (torch::logsumexp(head, -1, true) + std::log(tail / (1 - tail)) - torch::logsumexp(noise, -1, true));
  return torch::cat({head, c + noise}, -1);
}

KLOptions tail_options(double T, int64_t chunk, int64_t k = 0) {
  KLOptions o;
  o.temperature = T;
  o.top_k = k;
  o.top_k_tail = true;
  o.chunk_tokens = chunk;
  return o;
}

TEST(TopKTail, ValueAndGradientAreTheFormulasAndItsAutogradGradient) {
  auto x = random_batch(21);
  for (int64_t k : {1, 4, 12}) {
    for (double T : {1.0, 1.7}) {
      for (int64_t chunk : {3, 4096}) {
        auto s = x.s.clone().requires_grad_(true);
        auto loss = kl_divergence(s, x.t, x.mask, tail_options(T, chunk, k));
        const auto [ref, ref_grad] = reference_with_grad(x.s, x.t, x.mask, k, T);
        EXPECT_NEAR(loss.item<double>(), ref, 1e-12 * std::abs(ref)) << "k " << k << " T " << T << " chunk " << chunk;
        (2.0 * loss).backward();
        EXPECT_TRUE(all_close(s.grad(), 2.0 * ref_grad, 1e-10, 1e-14)) << "k " << k << " T " << T << " chunk " << chunk;
      }
    }
  }
}

TEST(TopKTail, GradientIsTheClosedFormAndDenseOutsideTheTopK) {
  auto x = random_batch(22);
  const int64_t k = 4;
  const double T = 1.3;
  auto s = x.s.clone().requires_grad_(true);
  kl_divergence(s, x.t, x.mask, tail_options(T, 3, k)).backward();
  // T (q - p) / n on S; T q (1 - p_tail / q_tail) / n outside S; zero on masked tokens.
  auto ids = std::get<1>(x.t.topk(k, -1));
  auto q = torch::softmax(x.s / T, -1), p = torch::softmax(x.t / T, -1);
  auto in_s = torch::zeros_like(x.t, torch::TensorOptions().dtype(torch::kBool)).scatter_(-1, ids, true);
  auto p_tail = (p * in_s.logical_not()).sum(-1, true), q_tail = (q * in_s.logical_not()).sum(-1, true);
  const double n = x.mask.sum().item<double>();
  auto closed = torch::where(in_s, T * (q - p), T * q * (1 - p_tail / q_tail)) * x.mask.unsqueeze(-1) / n;
  EXPECT_TRUE(all_close(s.grad(), closed, 1e-10, 1e-14));
  // Unlike the renormalised top-k KL, the ids outside S get a gradient (those of valid tokens).
  auto outside_valid = in_s.logical_not().logical_and(x.mask.unsqueeze(-1));
  EXPECT_GT(s.grad().masked_select(outside_valid).abs().min().item<double>(), 0.0);
  // and it is not the renormalised top-k KL
  KLOptions renorm = tail_options(T, 3, k);
  renorm.top_k_tail = false;
  EXPECT_GT(std::abs(kl_divergence(x.s, x.t, x.mask, renorm).item<double>() -
                     kl_divergence(x.s, x.t, x.mask, tail_options(T, 3, k)).item<double>()), 1e-3);
}

// k = V: the tail is empty and the tail KL is the full KL (value and gradient), given all V ids explicitly (the
// live call with top_k >= V takes the full-KL path itself). An empty teacher tail (p_tail = 0) under a vanishing
// student tail (q_tail ~ 1e-30) is the full KL as well.
TEST(TopKTail, WholeVocabularyAndAnEmptyTailAreTheFullKL) {
  auto x = random_batch(23);
  const double T = 1.4;
  auto [top, ids] = teacher_top_k(x.t, 13);
  auto lse = teacher_logsumexp(x.t, T);
  auto s = x.s.clone().requires_grad_(true);
  auto loss = kl_divergence_top_k(s, top, ids, x.mask, tail_options(T, 4), lse);
  EXPECT_NEAR(loss.item<double>(), reference_full_kl(x.s, x.t, x.mask, T).item<double>(), 1e-13);
  loss.backward();
  const double n = x.mask.sum().item<double>();
  auto closed = T * (torch::softmax(x.s / T, -1) - torch::softmax(x.t / T, -1)) * x.mask.unsqueeze(-1) / n;
  EXPECT_TRUE(all_close(s.grad(), closed, 1e-12, 1e-15));
  EXPECT_NEAR(kl_divergence(x.s, x.t, x.mask, tail_options(T, 4, 13)).item<double>(), loss.item<double>(), 1e-13);

  // The teacher puts nothing outside its top 4 (-inf logits); the student almost nothing (logits 70 below).
  const int64_t k = 4;
  auto t = x.t.clone(), st = x.s.clone();
  t.narrow(-1, k, 13 - k).fill_(-std::numeric_limits<double>::infinity());
  st.narrow(-1, k, 13 - k).sub_(70);
  auto s2 = st.clone().requires_grad_(true);
  auto l2 = kl_divergence(s2, t, x.mask, tail_options(1.0, 4, k));
  EXPECT_NEAR(l2.item<double>(), reference_full_kl(st, t, x.mask, 1.0).item<double>(), 1e-13);
  l2.backward();
  auto closed2 = (torch::softmax(st, -1) - torch::softmax(t, -1)) * x.mask.unsqueeze(-1) / n;
  EXPECT_TRUE(all_close(s2.grad(), closed2, 1e-12, 1e-15));
}

// Tails of ~1e-9: FP64 keeps them to the formula's precision; in FP32 the student's tail comes from a masked
// logsumexp (1 - sum_S q would round 1e-9 to 0 or 6e-8), so a teacher tail of 0.1 against a student tail of 1e-9
// (a large term, 0.1 log(1e8)) is still right to FP32 precision, and tiny tails on both sides stay finite.
TEST(TopKTail, TinyTailsStayFiniteAndAccurate) {
  const int64_t b = 2, n = 3, v = 40, k = 6;
  auto mask = torch::ones({b, n}, torch::kBool);
  struct Case {
    double teacher_tail, student_tail;
    torch::ScalarType dtype;
    double value_tol, grad_tol;  // absolute; FP32: the teacher's tail is known to the FP32 logsumexp's rounding
  };
  for (const auto& c : {Case{1e-9, 3e-9, torch::kFloat64, 1e-14, 1e-14}, Case{0.1, 1e-9, torch::kFloat32, 2e-5, 1e-7},
                        Case{1e-9, 1e-9, torch::kFloat32, 2e-6, 1e-7}}) {
    auto t = with_tail(b, n, v, k, c.teacher_tail, 31);
    auto s64 = with_tail(b, n, v, k, c.student_tail, 32);
    auto s = s64.to(c.dtype).requires_grad_(true);
    auto loss = kl_divergence(s, t.to(c.dtype), mask, tail_options(1.0, 4096, k));
    auto [ref, ref_grad] = reference_with_grad(s64.to(c.dtype), t.to(c.dtype), mask, k, 1.0);
    EXPECT_TRUE(std::isfinite(loss.item<double>()));
    EXPECT_NEAR(loss.item<double>(), ref, c.value_tol)
        << "tails " << c.teacher_tail << " / " << c.student_tail;
    loss.backward();
    EXPECT_TRUE(torch::isfinite(s.grad()).all().item<bool>());
    EXPECT_LT((s.grad().to(torch::kFloat64) - ref_grad).abs().max().item<double>(), c.grad_tol)
        << "tails " << c.teacher_tail << " / " << c.student_tail;
  }
  // The FP64 case's tail term itself (p_tail log(p_tail / q_tail) = 1e-9 log(1/3), per token, T = 1) is resolved:
  // the value differs from the same KL without it by that much.
  auto t = with_tail(b, n, v, k, 1e-9, 31), s = with_tail(b, n, v, k, 3e-9, 32);
  const double with_tail_term = kl_divergence(s, t, mask, tail_options(1.0, 4096, k)).item<double>();
  auto log_p = torch::log_softmax(t, -1).narrow(-1, 0, k), log_q = torch::log_softmax(s, -1).narrow(-1, 0, k);
  const double head_only = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item<double>();
  EXPECT_NEAR(with_tail_term - head_only, 1e-9 * std::log(1.0 / 3.0), 1e-15);
}

TEST(TopKTail, Bf16LogitsComputeInFp32AndKeepTheGradientInBf16) {
  auto x = random_batch(24, 2, 6, 300);
  auto s16 = x.s.to(torch::kBFloat16), t16 = x.t.to(torch::kBFloat16);
  auto s = s16.clone().requires_grad_(true);
  auto loss = kl_divergence(s, t16, x.mask, tail_options(1.0, 5, 32));
  EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
  // S as the loss picks it among BF16 ties
  auto ids = teacher_top_k(t16, 32).second;
  auto [ref, ref_grad] = reference_with_grad(s16.to(torch::kFloat64), t16.to(torch::kFloat64), x.mask, 32, 1.0, ids);
  EXPECT_NEAR(loss.item<double>(), ref, 1e-5 * ref);
  loss.backward();
  EXPECT_EQ(s.grad().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(all_close(s.grad(), ref_grad, 1e-2, 1e-6));  // BF16 rounding of the stored gradient
}

// What a teacher cache stores (teacher_top_k, teacher_logsumexp at T = 1) gives the live tail KL bit for bit; the
// logsumexp is the full-vocabulary one (across its fixed row chunks).
TEST(TopKTail, GivenTopKAndLogsumexpEqualTheLiveCallBitForBit) {
  auto x = random_batch(25, 3, 4, 13);
  for (double T : {1.0, 1.3}) {
    KLOptions o = tail_options(T, 3, 5);
    auto s1 = x.s.clone().requires_grad_(true), s2 = x.s.clone().requires_grad_(true);
    auto live = kl_divergence(s1, x.t, x.mask, o);
    auto [top, ids] = teacher_top_k(x.t, 8);
    auto given = kl_divergence_top_k(s2, top.narrow(-1, 0, 5), ids.narrow(-1, 0, 5), x.mask, o,
                                     teacher_logsumexp(x.t, T));
    EXPECT_TRUE(same_bits(live, given)) << "T " << T;
    live.backward();
    given.backward();
    EXPECT_TRUE(same_bits(s1.grad(), s2.grad())) << "T " << T;
  }
  auto gen = qad::testing::seeded_generator(26);
  auto big = torch::randn({3, 1500, 7}, gen, kF64) * 3;  // 4500 rows: three of teacher_logsumexp's chunks
  EXPECT_TRUE(all_close(teacher_logsumexp(big, 2.0), torch::logsumexp(big / 2.0, -1), 1e-15, 1e-15));
  EXPECT_EQ(teacher_logsumexp(big.to(torch::kBFloat16)).scalar_type(), torch::kFloat32);
}

TEST(TopKTail, RejectsAMissingOrMisshapedLogsumexp) {
  auto x = random_batch(27);
  auto [top, ids] = teacher_top_k(x.t, 4);
  const auto o = tail_options(1.0, 4);
  auto message = [&](const torch::Tensor& lse) {
    try {
      kl_divergence_top_k(x.s, top, ids, x.mask, o, lse);
    } catch (const qad::Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message({}).find("needs the teacher's logsumexp"), std::string::npos) << message({});
  EXPECT_NE(message(torch::zeros({2, 4}, kF64)).find("[2,5]"), std::string::npos) << message(torch::zeros({2, 4}, kF64));
  EXPECT_NO_THROW(kl_divergence_top_k(x.s, top, ids, x.mask, o, teacher_logsumexp(x.t)));
  KLOptions renorm = o;
  renorm.top_k_tail = false;  // the renormalised top-k KL needs no logsumexp
  EXPECT_NO_THROW(kl_divergence_top_k(x.s, top, ids, x.mask, renorm));
}

}  // namespace
