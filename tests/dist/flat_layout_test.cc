// The flat gradient layout: reverse order, alignment, bucket cuts at parameter boundaries, padding to a
// multiple of the world size, shard ranges and the parameter pieces inside them, against closed forms.
#include <gtest/gtest.h>

#include <numeric>

#include "dist/flat_layout.h"

namespace {

using namespace qad::dist;

int64_t up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

TEST(FlatLayout, ReverseOrderAlignedAndBucketed) {
  // Parameters 0..3 of 100, 1000, 10, 5000 elements; buckets close once they reach 1100 elements.
  const std::vector<int64_t> numel = {100, 1000, 10, 5000};
  auto l = plan_flat_layout(numel, 1100, 3);
  // Layout order 3, 2, 1, 0.
  EXPECT_EQ(l.offset[3], 0);
  EXPECT_EQ(l.offset[2], up(5000));
  EXPECT_EQ(l.offset[1], up(5000) + up(10));
  EXPECT_EQ(l.offset[0], up(5000) + up(10) + up(1000));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(l.offset[i] % kAlign, 0);
  // Param 3 alone exceeds the bucket size; 2 + 1 reach it (64 + 1024 = 1088 < 1100, then + 128 → closes with 0).
  ASSERT_EQ(l.buckets.size(), 2u);
  EXPECT_EQ(l.buckets[0].params, std::vector<int>({3}));
  EXPECT_EQ(l.buckets[1].params, std::vector<int>({2, 1, 0}));
  EXPECT_EQ(l.buckets[0].begin, 0);
  EXPECT_EQ(l.buckets[0].end, up(5000));
  EXPECT_EQ(l.buckets[1].begin, up(5000));
  const int64_t used = up(5000) + up(10) + up(1000) + up(100);
  const int64_t quantum = kAlign * 3;
  EXPECT_EQ(l.padded, (used + quantum - 1) / quantum * quantum);
  EXPECT_EQ(l.buckets.back().end, l.padded);  // the last bucket carries the padding
  EXPECT_EQ(l.bucket_of, std::vector<int>({1, 1, 1, 0}));
}

TEST(FlatLayout, BucketsCoverTheBufferContiguously) {
  std::vector<int64_t> numel;
  for (int i = 0; i < 37; ++i) numel.push_back(1 + (i * 7919) % 3000);
  for (int world : {1, 2, 3, 8}) {
    auto l = plan_flat_layout(numel, 4000, world);
    int64_t at = 0;
    std::vector<int> seen(numel.size(), 0);
    for (const auto& b : l.buckets) {
      EXPECT_EQ(b.begin, at);
      EXPECT_GE(b.end, b.begin);
      at = b.end;
      for (int p : b.params) {
        ++seen[p];
        EXPECT_GE(l.offset[p], b.begin);
        EXPECT_LE(l.offset[p] + numel[p], b.end);
      }
      if (&b != &l.buckets.back()) {
        EXPECT_GE(b.end - b.begin, 4000);
      }
    }
    EXPECT_EQ(at, l.padded);
    EXPECT_EQ(l.padded % (world * kAlign), 0);
    for (int s : seen) EXPECT_EQ(s, 1);
  }
}

TEST(FlatLayout, ShardsAndPiecesPartitionEveryParameter) {
  const std::vector<int64_t> numel = {300, 7, 4096, 129, 1};
  for (int world : {1, 2, 3, 4}) {
    auto l = plan_flat_layout(numel, 1 << 20, world);
    const int64_t s = l.padded / world;
    std::vector<int64_t> covered(numel.size(), 0);
    for (int r = 0; r < world; ++r) {
      auto range = shard_range(l, r);
      EXPECT_EQ(range.begin, r * s);  // closed form: [r S, (r + 1) S)
      EXPECT_EQ(range.end, (r + 1) * s);
      for (const auto& pc : pieces_in(l, range)) {
        EXPECT_GE(pc.flat_begin, range.begin);
        EXPECT_LE(pc.flat_begin + pc.size, range.end);
        EXPECT_EQ(pc.flat_begin, l.offset[pc.param] + pc.param_begin);
        EXPECT_EQ(pc.param_begin, covered[pc.param]);  // pieces of a parameter come in order, no gaps
        covered[pc.param] += pc.size;
      }
    }
    for (size_t i = 0; i < numel.size(); ++i) EXPECT_EQ(covered[i], numel[i]) << "param " << i << " world " << world;
  }
}

}  // namespace
