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

Batch two_rows() {
  Batch b;
  b.batch = 2;
  b.seq_len = 4;
  b.input_ids = {1, 2, 3, 4, 5, 6, 7, 8};
  b.targets = {2, 3, 4, -100, 6, 7, 50, 9};
  b.loss_mask = {1, 1, 1, 1, 0, 1, 0, 2};  // a weight of 2 counts twice in the loss tokens, once as a label
  b.attention_mask = {1, 1, 1, 1, 1, 1, 1, 1};
  return b;
}

// The facts are what the host bytes say (worked out by hand here), bound to the tensors to_tensors returns.
TEST(BatchTensors, HostFactsDescribeTheTensorsMade) {
  auto b = two_rows();
  auto t = to_tensors(b);
  ASSERT_TRUE(t.host.known);
  EXPECT_TRUE(t.host.targets.is_same(t.targets) && t.host.loss_mask.is_same(t.loss_mask) &&
              t.host.attention_mask.is_same(t.attention_mask));
  EXPECT_FALSE(t.host.padded);
  EXPECT_EQ(t.host.labels, 5);  // 2, 3, 4, 7, 9: -100 is ignored although trained on, 50 and 6 are not trained on
  EXPECT_EQ(t.host.min_label, 2);
  EXPECT_EQ(t.host.max_label, 9);
  EXPECT_EQ(t.host.loss_tokens, 7);
  EXPECT_TRUE(labels_known_in_range(t, 10));
  EXPECT_FALSE(labels_known_in_range(t, 9));  // 9 is outside [0, 9)
  EXPECT_EQ(loss_tokens(t), 7);
  b.attention_mask[6] = 0;
  auto padded = to_tensors(b);
  EXPECT_TRUE(padded.host.padded);
  EXPECT_TRUE(has_padding(padded));
  EXPECT_FALSE(has_padding(t));
  // read_host_facts gives the same facts from the tensors themselves.
  const auto read = read_host_facts(padded);
  EXPECT_TRUE(read.known && read.padded && read.attention_mask.is_same(padded.attention_mask));
  EXPECT_EQ(read.labels, 5);
  EXPECT_EQ(read.min_label, 2);
  EXPECT_EQ(read.max_label, 9);
  EXPECT_EQ(read.loss_tokens, 7);
}

// The helpers answer from the facts while they describe the batch's tensors (shown by facts that disagree with the
// tensors on purpose) and read the tensors once a field holds another tensor.
TEST(BatchTensors, HelpersReadTheTensorsOnceAFieldIsReplaced) {
  auto t = to_tensors(two_rows());
  t.host.padded = true;
  t.host.loss_tokens = 99;
  EXPECT_TRUE(has_padding(t));
  EXPECT_EQ(loss_tokens(t), 99);
  t.attention_mask = t.attention_mask.clone();
  t.loss_mask = t.loss_mask.clone();
  EXPECT_FALSE(has_padding(t));  // the clone's values: no padding
  EXPECT_EQ(loss_tokens(t), 7);
  EXPECT_FALSE(labels_known_in_range(t, 10));  // the loss mask is another tensor now: the caller must check
  BatchTensors built;  // field by field, no facts
  built.attention_mask = torch::ones({1, 3}, torch::kBool);
  built.attention_mask[0][2] = false;
  built.targets = torch::zeros({1, 3}, torch::kLong);
  built.loss_mask = torch::ones({1, 3});
  EXPECT_TRUE(has_padding(built));
  EXPECT_EQ(loss_tokens(built), 3);
  EXPECT_FALSE(labels_known_in_range(built, 10));
  EXPECT_FALSE(has_padding(BatchTensors{}));
}

TEST(BatchTensors, PaddingOfARangeOfRows) {
  auto b = two_rows();
  b.attention_mask[7] = 0;
  EXPECT_FALSE(has_padding(b, 0, 1));
  EXPECT_TRUE(has_padding(b, 1, 1));
  EXPECT_TRUE(has_padding(b, 0, 2));
  EXPECT_FALSE(has_padding(b, 1, 0));
  EXPECT_THROW(has_padding(b, 1, 2), qad::Error);
}

}  // namespace
}  // namespace qad::data
