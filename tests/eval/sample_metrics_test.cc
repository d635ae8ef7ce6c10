// avg@k, pass@k and maj@k on constructed items against their closed forms.
#include <gtest/gtest.h>

#include <cmath>

#include "eval/sample_metrics.h"
#include "util/error.h"

namespace qad::eval {
namespace {

double binomial(int n, int k) {
  double r = 1;
  for (int i = 1; i <= k; ++i) r = r * (n - k + i) / i;
  return r;
}

TEST(PassAtK, EqualsOneMinusTheBinomialRatio) {
  EXPECT_DOUBLE_EQ(pass_at_k(5, 2, 1), 0.4);                 // c / n
  EXPECT_DOUBLE_EQ(pass_at_k(5, 2, 2), 1 - 3.0 / 10);         // 1 - C(3,2)/C(5,2)
  EXPECT_DOUBLE_EQ(pass_at_k(5, 2, 3), 1 - 1.0 / 10);         // 1 - C(3,3)/C(5,3)
  EXPECT_DOUBLE_EQ(pass_at_k(5, 2, 4), 1.0);                  // fewer than k wrong samples
  EXPECT_DOUBLE_EQ(pass_at_k(5, 0, 3), 0.0);
  EXPECT_DOUBLE_EQ(pass_at_k(5, 5, 1), 1.0);
  EXPECT_NEAR(pass_at_k(10, 3, 5), 1 - 21.0 / 252, 1e-15);    // 1 - C(7,5)/C(10,5)
  for (int n = 1; n <= 20; ++n) {
    for (int c = 0; c <= n; ++c) {
      for (int k = 1; k <= n; ++k) {
        const double want = n - c < k ? 1.0 : 1 - binomial(n - c, k) / binomial(n, k);
        EXPECT_NEAR(pass_at_k(n, c, k), want, 1e-12) << n << " " << c << " " << k;
      }
    }
  }
  EXPECT_THROW(pass_at_k(4, 1, 5), Error);
  EXPECT_THROW(pass_at_k(4, 5, 1), Error);
}

std::vector<SampleOutcome> samples(std::initializer_list<std::pair<const char*, bool>> s) {
  std::vector<SampleOutcome> v;
  for (const auto& [vote, correct] : s) v.push_back({vote, correct});
  return v;
}

TEST(SampleMetrics, AvgPassMajOverItemsWithStandardErrors) {
  // Three items, four samples each: 2/4, 4/4 and 0/4 correct.
  std::vector<std::vector<SampleOutcome>> items = {
      samples({{"7", true}, {"5", false}, {"7", true}, {"5", false}}),
      samples({{"3", true}, {"3", true}, {"3", true}, {"3", true}}),
      samples({{"1", false}, {"2", false}, {"", false}, {"2", false}}),
  };
  auto avg = avg_at_k(items);
  EXPECT_DOUBLE_EQ(avg.value, 0.5);
  EXPECT_NEAR(avg.standard_error, 0.5 / std::sqrt(3.0), 1e-15);  // sd(0.5, 1, 0) = 0.5
  EXPECT_EQ(avg.items, 3);
  // pass@2 per item: 1 - C(2,2)/C(4,2) = 5/6, 1, 0.
  auto p2 = pass_at(items, 2);
  EXPECT_NEAR(p2.value, (5.0 / 6 + 1 + 0) / 3, 1e-15);
  const double m = p2.value;
  const double sd = std::sqrt((std::pow(5.0 / 6 - m, 2) + std::pow(1 - m, 2) + std::pow(0 - m, 2)) / 2);
  EXPECT_NEAR(p2.standard_error, sd / std::sqrt(3.0), 1e-15);
  EXPECT_DOUBLE_EQ(pass_at(items, 4).value, 2.0 / 3);
  EXPECT_DOUBLE_EQ(pass_at(items, 1).value, avg.value);  // pass@1 = avg@n
  // maj@4: item 1 ties 7 (2 votes) and 5 (2): the first seen, 7, is right; item 2 right; item 3 picks 2, wrong.
  EXPECT_DOUBLE_EQ(maj_at(items, 4).value, 2.0 / 3);
  // maj@1 is the first sample's correctness.
  EXPECT_DOUBLE_EQ(maj_at(items, 1).value, 2.0 / 3);
}

TEST(SampleMetrics, MajorityVoteRules) {
  EXPECT_TRUE(majority_correct(samples({{"5", false}, {"7", true}, {"7", true}}), 3));
  EXPECT_FALSE(majority_correct(samples({{"5", false}, {"7", true}, {"7", true}}), 2));  // only the first two vote
  EXPECT_TRUE(majority_correct(samples({{"", false}, {"", false}, {"4", true}}), 3));     // no-answers do not vote
  EXPECT_FALSE(majority_correct(samples({{"", false}, {"", false}}), 2));
  EXPECT_THROW(majority_correct(samples({{"1", true}}), 2), Error);
}

TEST(SampleMetrics, OneItemHasNoStandardError) {
  auto e = mean_estimate({0.25});
  EXPECT_DOUBLE_EQ(e.value, 0.25);
  EXPECT_DOUBLE_EQ(e.standard_error, 0.0);
  EXPECT_EQ(mean_estimate({}).items, 0);
}

}  // namespace
}  // namespace qad::eval
