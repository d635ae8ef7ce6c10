// tap_hidden_rows against index_select on the full tensor: the same rows; h's gradient is its downstream
// gradient with the rows' gradient added (bit for bit: one addition per element either way), also when only the
// rows are used, and plain index_select without autograd. Built twice: test_model on the CPU, test_model_gpu
// (QAD_HIDDEN_ROWS_GPU) on CUDA with BF16 as well.
#include <gtest/gtest.h>

#include <vector>

#include "common/test_util.h"
#include "fused/add_gather_rows.h"
#include "model/hidden_rows.h"

namespace qad::model {
namespace {

#ifdef QAD_HIDDEN_ROWS_GPU
#define REQUIRE_DEVICE() QAD_REQUIRE_GPU()
const torch::Device kDevice = torch::kCUDA;
const std::vector<torch::ScalarType> kTypes = {torch::kFloat32, torch::kBFloat16};
#else
#define REQUIRE_DEVICE() \
  do {                   \
  } while (0)
const torch::Device kDevice = torch::kCPU;
const std::vector<torch::ScalarType> kTypes = {torch::kFloat64, torch::kFloat32};
#endif

struct Case {
  torch::Tensor h, index, w_down, w_rows;
};

Case make_case(uint64_t seed, torch::ScalarType dtype) {
  auto gen = qad::testing::seeded_generator(seed);
  Case c;
  c.h = torch::randn({3, 5, 8}, gen).to(kDevice, dtype);
  c.index = std::get<0>(torch::randperm(15, gen, torch::kLong).narrow(0, 0, 6).sort()).to(kDevice);
  c.w_down = torch::randn({3, 5, 8}, gen).to(kDevice, dtype);
  c.w_rows = torch::randn({6, 8}, gen).to(kDevice, dtype);
  return c;
}

TEST(TapHiddenRows, GradientIsTheDownstreamGradientPlusTheRowsGradient) {
  REQUIRE_DEVICE();
  for (auto dtype : kTypes) {
    const auto c = make_case(1, dtype);
    // Reference: index_select on h; h has two downstream uses, as a decoder layer's input does.
    auto h1 = c.h.clone().requires_grad_(true);
    auto r1 = h1.reshape({-1, 8}).index_select(0, c.index);
    ((h1 * c.w_down).sum() + h1.square().sum() + (r1 * c.w_rows).sum()).backward();

    auto h2 = c.h.clone().requires_grad_(true);
    auto [passed, r2] = tap_hidden_rows(h2, c.index);
    EXPECT_TRUE(qad::testing::same_bits(r2, r1.detach()));
    EXPECT_TRUE(qad::testing::same_bits(passed, h2.detach()));
    ((passed * c.w_down).sum() + passed.square().sum() + (r2 * c.w_rows).sum()).backward();
    EXPECT_TRUE(qad::testing::same_bits(h1.grad(), h2.grad()));
    // The rows' gradient really reached h (the test would pass trivially if it were dropped).
    auto h3 = c.h.clone().requires_grad_(true);
    ((h3 * c.w_down).sum() + h3.square().sum()).backward();
    EXPECT_FALSE(qad::testing::same_bits(h3.grad(), h2.grad()));
  }
}

// The engine's gradient for h' is a fresh sum here (two downstream uses), so the rows go in place; a gradient
// that another node still holds must not be written into: its holder would see the rows' gradient too.
struct SharedGradient : public torch::autograd::Function<SharedGradient> {
  static torch::Tensor held;  // the gradient this node returns and keeps
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) { return x.clone(); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    return {held};
  }
};
torch::Tensor SharedGradient::held;

TEST(TapHiddenRows, AddsInPlaceOnlyIntoAGradientNothingElseHolds) {
  REQUIRE_DEVICE();
  for (auto dtype : kTypes) {
    const auto c = make_case(4, dtype);
    const auto rows_grad = torch::zeros({15, 8}, c.w_rows.options()).index_add_(0, c.index, c.w_rows);
    // Fresh gradient: in place, and the result is the downstream gradient plus the rows'.
    auto before = tap_rows_backward_counts();
    auto h = c.h.clone().requires_grad_(true);
    auto [passed, rows] = tap_hidden_rows(h, c.index);
    ((passed * c.w_down).sum() + passed.square().sum() + (rows * c.w_rows).sum()).backward();
    auto after = tap_rows_backward_counts();
    EXPECT_EQ(after.in_place - before.in_place, 1);
    EXPECT_EQ(after.copied - before.copied, 0);
    auto expect = (c.w_down + 2 * c.h).reshape({15, 8}).add(rows_grad).view({3, 5, 8});
    EXPECT_TRUE(torch::allclose(h.grad(), expect, 3e-2, 3e-2));

    // A gradient held elsewhere (here by the node that produced it): out of place, and the holder's tensor keeps
    // its values.
    SharedGradient::held = c.w_down.clone();
    const auto held_before = SharedGradient::held.clone();
    before = tap_rows_backward_counts();
    auto h2 = c.h.clone().requires_grad_(true);
    auto [passed2, rows2] = tap_hidden_rows(h2, c.index);
    (SharedGradient::apply(passed2).sum() + (rows2 * c.w_rows).sum()).backward();
    after = tap_rows_backward_counts();
    EXPECT_EQ(after.copied - before.copied, 1);
    EXPECT_EQ(after.in_place - before.in_place, 0);
    EXPECT_TRUE(qad::testing::same_bits(SharedGradient::held, held_before));
    EXPECT_TRUE(qad::testing::same_bits(h2.grad(), c.w_down.reshape({15, 8}).add(rows_grad).view({3, 5, 8})));

    // An expanded gradient (sum's backward): not dense, so out of place too.
    before = tap_rows_backward_counts();
    auto h3 = c.h.clone().requires_grad_(true);
    auto [passed3, rows3] = tap_hidden_rows(h3, c.index);
    (passed3.sum() + (rows3 * c.w_rows).sum()).backward();
    after = tap_rows_backward_counts();
    EXPECT_EQ(after.copied - before.copied, 1);
    EXPECT_TRUE(qad::testing::same_bits(h3.grad(), rows_grad.add(1).view({3, 5, 8})));
    SharedGradient::held = torch::Tensor();
  }
}

TEST(TapHiddenRows, OnlyTheRowsUsed) {
  REQUIRE_DEVICE();
  const auto c = make_case(2, kTypes[0]);
  auto h = c.h.clone().requires_grad_(true);
  auto [passed, rows] = tap_hidden_rows(h, c.index);
  (rows * c.w_rows).sum().backward();
  auto expect = torch::zeros({15, 8}, c.w_rows.options()).index_add_(0, c.index, c.w_rows).view({3, 5, 8});
  EXPECT_TRUE(qad::testing::same_bits(h.grad(), expect));
}

TEST(TapHiddenRows, WithoutAutogradIsIndexSelect) {
  REQUIRE_DEVICE();
  const auto c = make_case(3, kTypes.back());
  {
    torch::NoGradGuard ng;
    auto h = c.h.clone().requires_grad_(true);
    auto [passed, rows] = tap_hidden_rows(h, c.index);
    EXPECT_TRUE(passed.is_same(h));  // h itself, no autograd node
    EXPECT_FALSE(rows.requires_grad());
    EXPECT_TRUE(qad::testing::same_bits(rows, c.h.reshape({-1, 8}).index_select(0, c.index)));
  }
  auto [passed, rows] = tap_hidden_rows(c.h, c.index);  // needs no gradient
  EXPECT_FALSE(rows.requires_grad());
  EXPECT_THROW(tap_hidden_rows(c.h, c.index.to(torch::kInt)), std::exception);
}

// add_and_tap_rows (a decoder layer's last residual add with its rows gathered; on the GPU one kernel) against
// tap_hidden_rows(a + b): the same sum and rows, written into the given slice, and the same gradients for a and b
// bit for bit, whether the sum's two readers use `sum` for both or `sum` and `residual` (then the node sums their
// gradients with the rows', on the GPU in one kernel), the result written into a gradient nothing else holds.
TEST(AddAndTapRows, EqualsTheAddThenTapHiddenRows) {
  REQUIRE_DEVICE();
  for (auto dtype : kTypes) {
    for (bool apart : {false, true}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + (apart ? ", residual apart" : ", one output"));
      const auto c = make_case(5, dtype);
      auto gen = qad::testing::seeded_generator(6);
      const auto b0 = torch::randn({3, 5, 8}, gen).to(kDevice, dtype);
      auto a1 = c.h.clone().requires_grad_(true), b1 = b0.clone().requires_grad_(true);
      auto [sum1, r1] = tap_hidden_rows(a1 + b1, c.index);
      ((sum1 * c.w_down).sum() + sum1.square().sum() + (r1 * c.w_rows).sum()).backward();

      auto a2 = c.h.clone().requires_grad_(true), b2 = b0.clone().requires_grad_(true);
      auto into = torch::full({6, 8}, std::nan(""), c.h.options());
      const RowTap tap{c.index, fused::slots_of_rows(c.index, 15), into};
      const auto before = tap_rows_backward_counts();
      auto t = add_and_tap_rows(a2, b2, tap);
      EXPECT_TRUE(t.rows.is_alias_of(into));
      EXPECT_TRUE(t.residual.is_alias_of(t.sum));
      EXPECT_TRUE(qad::testing::same_bits(t.sum, sum1.detach()));
      EXPECT_TRUE(qad::testing::same_bits(t.rows, r1.detach()));
      const auto& second = apart ? t.residual : t.sum;
      ((t.sum * c.w_down).sum() + second.square().sum() + (t.rows * c.w_rows).sum()).backward();
      const auto after = tap_rows_backward_counts();
      EXPECT_EQ(after.in_place - before.in_place, 1);
      EXPECT_EQ(after.copied - before.copied, 0);
      EXPECT_TRUE(qad::testing::same_bits(a2.grad(), a1.grad()));
      EXPECT_TRUE(qad::testing::same_bits(b2.grad(), b1.grad()));
      EXPECT_TRUE(qad::testing::same_bits(b2.grad(), a2.grad()));
    }
    const auto c = make_case(5, dtype);
    const auto b0 = torch::randn({3, 5, 8}, qad::testing::seeded_generator(7)).to(kDevice, dtype);
    const RowTap tap{c.index, fused::slots_of_rows(c.index, 15), {}};
    // Only one operand needs a gradient (a frozen residual): it gets it, also when only `residual` is read.
    auto b3 = b0.clone().requires_grad_(true);
    auto t3 = add_and_tap_rows(c.h, b3, tap);
    ((t3.residual * c.w_down).sum() + (t3.rows * c.w_rows).sum()).backward();
    auto rows_grad = torch::zeros({15, 8}, c.w_rows.options()).index_add_(0, c.index, c.w_rows);
    EXPECT_TRUE(qad::testing::same_bits(b3.grad(), c.w_down.reshape({15, 8}).add(rows_grad).view({3, 5, 8})));
    // A promoting add (no decoder layer's, but allowed): the sum's rows come in its own dtype, not in the slice.
    const auto wide = b0.to(torch::kFloat64);
    auto t5 = add_and_tap_rows(c.h, wide, RowTap{c.index, {}, torch::empty({6, 8}, c.h.options())});
    EXPECT_EQ(t5.rows.scalar_type(), torch::kFloat64);
    EXPECT_TRUE(qad::testing::same_bits(t5.rows, (c.h + wide).reshape({15, 8}).index_select(0, c.index)));
    // Without autograd: the sum and its rows, no residual.
    torch::NoGradGuard no_grad;
    auto t4 = add_and_tap_rows(c.h, b0, RowTap{c.index, {}, {}});
    EXPECT_FALSE(t4.rows.requires_grad());
    EXPECT_FALSE(t4.residual.defined());
    EXPECT_TRUE(qad::testing::same_bits(t4.rows, (c.h + b0).reshape({15, 8}).index_select(0, c.index)));
  }
}

}  // namespace
}  // namespace qad::model
