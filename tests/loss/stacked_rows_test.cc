// stack_rows against torch::stack: the same values and, through a loss that weights every element, the same
// gradient for every row (bit for bit: each row's gradient is the same slice of the same tensor); no copy when the
// rows are slices of one buffer a uniform step apart (consecutive, or with scratch rows between them: a write into
// the buffer shows through), torch::stack otherwise (another order, an uneven gap, a row that is not a slice,
// different shapes); rows without gradients; only some rows needing one.
#include <gtest/gtest.h>

#include <vector>

#include <torch/csrc/autograd/variable.h>

#include "common/test_util.h"
#include "loss/stacked_rows.h"

namespace qad::loss {
namespace {

std::vector<torch::Tensor> slices(const torch::Tensor& buffer, const std::vector<int64_t>& which) {
  std::vector<torch::Tensor> out;
  for (auto i : which) out.push_back(buffer.select(0, i).detach());
  return out;
}

TEST(StackRows, ConsecutiveSlicesAreStackedWithoutACopyAndGetTheirGradients) {
  auto gen = qad::testing::seeded_generator(5);
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    auto src = torch::randn({4, 6, 8}, gen).to(dtype);
    auto w = torch::randn({4, 6, 8}, gen).to(dtype);
    // Reference: rows that need a gradient, stacked by torch::stack.
    auto leaf_ref = src.clone().requires_grad_(true);
    std::vector<torch::Tensor> ref_rows;
    for (int64_t i = 0; i < 4; ++i) ref_rows.push_back(leaf_ref.select(0, i) * static_cast<double>(i + 1));
    auto ref = torch::stack(ref_rows);
    (ref * w).sum().backward();

    // The same rows written into consecutive slices of one buffer, each slice an alias carrying its row's
    // gradient function (what tap_hidden_rows returns).
    auto leaf = src.clone().requires_grad_(true);
    auto buffer = torch::empty({4, 6, 8}, torch::dtype(dtype));
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < 4; ++i) {
      auto r = leaf.select(0, i) * static_cast<double>(i + 1);
      buffer.select(0, i).copy_(r.detach());
      auto alias = buffer.select(0, i).detach();
      torch::autograd::impl::set_gradient_edge(alias, {r.grad_fn(), static_cast<uint32_t>(r.output_nr())});
      rows.push_back(alias);
    }
    ASSERT_TRUE(rows_are_consecutive_slices(rows));
    auto stacked = stack_rows(rows);
    EXPECT_TRUE(stacked.is_alias_of(buffer));
    EXPECT_TRUE(qad::testing::same_bits(stacked.detach(), ref.detach()));
    (stacked * w).sum().backward();
    EXPECT_TRUE(qad::testing::same_bits(leaf.grad(), leaf_ref.grad())) << c10::toString(dtype);
    // The gradient really depends on the row (not a constant): rows scaled 1..4 get w scaled 1..4.
    EXPECT_TRUE(qad::testing::same_bits(leaf.grad().select(0, 2), w.select(0, 2) * 3.0));
    // A view, not a copy: a write into the buffer shows through.
    buffer.select(0, 1).fill_(7);
    EXPECT_EQ(stacked.select(0, 1).max().item<double>(), 7);
  }
}

// What model::ForwardOutput gathers with hidden_scratch_rows: each layer's rows followed by scratch rows. The view's
// layer stride is the step; values and gradients are torch::stack's; the scratch is not part of the view.
TEST(StackRows, SlicesWithScratchRowsBetweenThemAreAView) {
  auto gen = qad::testing::seeded_generator(8);
  auto buffer = torch::randn({4, 6 + 3, 8}, gen);
  auto leaf = buffer.narrow(1, 0, 6).clone().requires_grad_(true);
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < 4; ++i) {
    auto r = leaf.select(0, i) * static_cast<double>(i + 1);
    buffer.select(0, i).narrow(0, 0, 6).copy_(r.detach());
    auto alias = buffer.select(0, i).narrow(0, 0, 6).detach();
    torch::autograd::impl::set_gradient_edge(alias, {r.grad_fn(), static_cast<uint32_t>(r.output_nr())});
    rows.push_back(alias);
  }
  ASSERT_TRUE(rows_are_consecutive_slices(rows));
  auto stacked = stack_rows(rows);
  EXPECT_TRUE(stacked.is_alias_of(buffer));
  EXPECT_EQ(stacked.sizes(), torch::IntArrayRef({4, 6, 8}));
  EXPECT_EQ(stacked.stride(0), 9 * 8);
  EXPECT_TRUE(qad::testing::same_bits(stacked.detach(), torch::stack(rows).detach()));
  auto w = torch::randn({4, 6, 8}, gen);
  (stacked * w).sum().backward();
  EXPECT_TRUE(qad::testing::same_bits(leaf.grad().select(0, 2), w.select(0, 2) * 3.0));
  // Every other slice of a buffer is such a view too (the step is two slices).
  auto plain = torch::randn({5, 3, 4}, gen);
  auto every_other = slices(plain, {0, 2, 4});
  ASSERT_TRUE(rows_are_consecutive_slices(every_other));
  EXPECT_TRUE(qad::testing::same_bits(stack_rows(every_other), torch::stack(every_other)));
  EXPECT_TRUE(stack_rows(every_other).is_alias_of(plain));
}

TEST(StackRows, AnythingElseIsTorchStack) {
  auto gen = qad::testing::seeded_generator(6);
  auto buffer = torch::randn({5, 3, 4}, gen);
  const std::vector<std::vector<int64_t>> not_consecutive = {{1, 0, 2}, {0, 2, 3}, {0, 1, 1}};
  for (const auto& which : not_consecutive) {
    auto rows = slices(buffer, which);
    EXPECT_FALSE(rows_are_consecutive_slices(rows));
    auto s = stack_rows(rows);
    EXPECT_FALSE(s.is_alias_of(buffer));
    EXPECT_TRUE(qad::testing::same_bits(s, torch::stack(rows)));
  }
  // Separate tensors; a transposed slice; different shapes.
  std::vector<torch::Tensor> separate = {torch::randn({3, 4}, gen), torch::randn({3, 4}, gen)};
  EXPECT_FALSE(rows_are_consecutive_slices(separate));
  EXPECT_TRUE(qad::testing::same_bits(stack_rows(separate), torch::stack(separate)));
  auto square = torch::randn({2, 4, 4}, gen);
  EXPECT_FALSE(rows_are_consecutive_slices({square.select(0, 0).t(), square.select(0, 1).t()}));
  EXPECT_FALSE(rows_are_consecutive_slices({buffer.select(0, 0), buffer.select(0, 1).narrow(0, 0, 2)}));
  EXPECT_FALSE(rows_are_consecutive_slices({}));
  // Consecutive slices that need no gradient: a plain view.
  auto rows = slices(buffer, {2, 3, 4});
  ASSERT_TRUE(rows_are_consecutive_slices(rows));
  auto s = stack_rows(rows);
  EXPECT_TRUE(s.is_alias_of(buffer));
  EXPECT_FALSE(s.requires_grad());
  EXPECT_TRUE(qad::testing::same_bits(s, buffer.narrow(0, 2, 3)));
}

TEST(StackRows, OnlyTheRowsThatNeedAGradientGetOne) {
  auto gen = qad::testing::seeded_generator(7);
  auto leaf = torch::randn({3, 4}, gen).requires_grad_(true);
  auto buffer = torch::empty({2, 3, 4});
  auto r0 = leaf * 2.0;
  buffer.select(0, 0).copy_(r0.detach());
  buffer.select(0, 1).copy_(torch::randn({3, 4}, gen));
  auto a0 = buffer.select(0, 0).detach(), a1 = buffer.select(0, 1).detach();
  torch::autograd::impl::set_gradient_edge(a0, {r0.grad_fn(), static_cast<uint32_t>(r0.output_nr())});
  auto s = stack_rows({a0, a1});
  ASSERT_TRUE(s.requires_grad());
  auto w = torch::randn({2, 3, 4}, gen);
  (s * w).sum().backward();
  EXPECT_TRUE(qad::testing::same_bits(leaf.grad(), w.select(0, 0) * 2.0));
}

}  // namespace
}  // namespace qad::loss
