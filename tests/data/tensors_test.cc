// The Batch → tensor adapter: shapes, dtypes and values.
#include <torch/torch.h>

#include "data/batch_tensors.h"
#include "gtest/gtest.h"
#include "util/error.h"

namespace qad::data {
namespace {

TEST(BatchTensors, ShapesDtypesAndValues) {
  Batch b;
  b.batch = 2;
  b.seq_len = 3;
  b.input_ids = {1, 2, 3, 4, 5, 0};
  b.targets = {2, 3, 9, 5, 7, 0};
  b.loss_mask = {0, 1, 1, 1, 1, 0};
  b.attention_mask = {1, 1, 1, 1, 1, 0};
  auto t = to_tensors(b);
  EXPECT_EQ(t.input_ids.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.input_ids.scalar_type(), torch::kInt64);
  EXPECT_EQ(t.targets.scalar_type(), torch::kInt64);
  EXPECT_EQ(t.loss_mask.scalar_type(), torch::kFloat32);
  EXPECT_EQ(t.attention_mask.scalar_type(), torch::kBool);
  EXPECT_EQ(t.input_ids[1][1].item<int64_t>(), 5);
  EXPECT_EQ(t.targets[0][2].item<int64_t>(), 9);
  EXPECT_EQ(t.loss_mask.sum().item<float>(), 4.0f);
  EXPECT_EQ(t.loss_mask[0][0].item<float>(), 0.0f);
  EXPECT_FALSE(t.attention_mask[1][2].item<bool>());
  EXPECT_EQ(t.attention_mask.sum().item<int64_t>(), 5);
  b.targets.pop_back();
  EXPECT_THROW(to_tensors(b), qad::Error);
}

}  // namespace
}  // namespace qad::data
