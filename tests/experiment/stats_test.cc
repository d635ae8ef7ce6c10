// Statistics against closed forms and published tables: Student-t quantiles (NIST / any statistics table),
// the t CDF for df = 1 and 2 (closed forms), mean / sample std / interval of constructed inputs, and paired
// differences with their verdicts.
#include <gtest/gtest.h>

#include <cmath>

#include "experiment/stats.h"
#include "util/error.h"

namespace qad::experiment {
namespace {

TEST(StudentT, QuantilesMatchPublishedTables) {
  // t(0.975; df), four decimals as tabled.
  EXPECT_NEAR(student_t_quantile(0.975, 1), 12.7062, 5e-5);
  EXPECT_NEAR(student_t_quantile(0.975, 2), 4.3027, 5e-5);
  EXPECT_NEAR(student_t_quantile(0.975, 4), 2.7764, 5e-5);
  EXPECT_NEAR(student_t_quantile(0.975, 9), 2.2622, 5e-5);
  EXPECT_NEAR(student_t_quantile(0.975, 30), 2.0423, 5e-5);
  EXPECT_NEAR(student_t_quantile(0.995, 10), 3.1693, 5e-5);
  EXPECT_NEAR(student_t_quantile(0.95, 5), 2.0150, 5e-5);
  EXPECT_NEAR(student_t_quantile(0.975, 1e7), 1.959964, 1e-5);  // the normal's 97.5 % point
  EXPECT_NEAR(student_t_quantile(0.025, 4), -2.7764, 5e-5);      // symmetric
  EXPECT_DOUBLE_EQ(student_t_quantile(0.5, 3), 0.0);
}

TEST(StudentT, CdfMatchesClosedForms) {
  const double pi = std::acos(-1.0);
  for (double t : {-30.0, -2.5, -0.3, 0.0, 0.7, 1.0, 4.0, 100.0}) {
    EXPECT_NEAR(student_t_cdf(t, 1), 0.5 + std::atan(t) / pi, 1e-13) << "Cauchy at t = " << t;
    EXPECT_NEAR(student_t_cdf(t, 2), 0.5 + t / (2.0 * std::sqrt(2.0 + t * t)), 1e-13) << "df 2 at t = " << t;
  }
  EXPECT_THROW(student_t_cdf(1.0, 0), Error);
  EXPECT_THROW(student_t_quantile(1.0, 3), Error);
}

TEST(Describe, MeanSampleStdStderrAndInterval) {
  // {2, 4, 4, 4, 5, 5, 7, 9}: mean 5, Σ(x − 5)² = 32, sample variance 32 / 7.
  const Stats s = describe({2, 4, 4, 4, 5, 5, 7, 9});
  EXPECT_EQ(s.n, 8u);
  EXPECT_DOUBLE_EQ(s.mean, 5.0);
  ASSERT_TRUE(s.std_dev && s.std_err && s.ci_low && s.ci_high);
  EXPECT_NEAR(*s.std_dev, std::sqrt(32.0 / 7.0), 1e-15);
  EXPECT_NEAR(*s.std_err, std::sqrt(32.0 / 7.0) / std::sqrt(8.0), 1e-15);
  const double half = 2.3646242515927847 * std::sqrt(32.0 / 7.0) / std::sqrt(8.0);  // t(0.975; 7), mpmath
  EXPECT_NEAR(*s.ci_low, 5.0 - half, 1e-12);
  EXPECT_NEAR(*s.ci_high, 5.0 + half, 1e-12);
}

TEST(Describe, OneValueHasNoSpreadAndCloseValuesDoNotCancel) {
  const Stats one = describe({0.25});
  EXPECT_EQ(one.n, 1u);
  EXPECT_DOUBLE_EQ(one.mean, 0.25);
  EXPECT_FALSE(one.std_dev || one.std_err || one.ci_low || one.ci_high);
  // 1e9 + {1, 2, 3}: std exactly 1 (a one-pass E[x²] − E[x]² would lose it).
  const Stats big = describe({1e9 + 1, 1e9 + 2, 1e9 + 3});
  EXPECT_DOUBLE_EQ(*big.std_dev, 1.0);
  EXPECT_THROW(describe({}), Error);
}

TEST(Paired, MatchesBySeedAndGivesVerdicts) {
  // a − b = 0.011, 0.012, 0.013 on seeds 1..3 (seed 4 only in a, seed 9 only in b: dropped).
  const std::map<uint64_t, double> a = {{1, 0.821}, {2, 0.832}, {3, 0.843}, {4, 0.5}};
  const std::map<uint64_t, double> b = {{1, 0.81}, {2, 0.82}, {3, 0.83}, {9, 0.1}};
  const PairedDifference d = paired_difference(a, b);
  EXPECT_EQ(d.seeds, (std::vector<uint64_t>{1, 2, 3}));
  ASSERT_EQ(d.differences.size(), 3u);
  EXPECT_NEAR(d.stats.mean, 0.012, 1e-15);
  EXPECT_NEAR(*d.stats.std_dev, 0.001, 1e-15);
  const double t2 = 0.95 / std::sqrt(2.0 * 0.975 * 0.025);  // t(0.975; 2) in closed form: (2p − 1) / √(2p(1 − p))
  EXPECT_NEAR(student_t_quantile(0.975, 2), t2, 1e-12);
  const double half = t2 * 0.001 / std::sqrt(3.0);
  EXPECT_NEAR(*d.stats.ci_low, 0.012 - half, 1e-14);
  EXPECT_NEAR(*d.stats.ci_high, 0.012 + half, 1e-14);
  EXPECT_EQ(d.verdict, Verdict::kGreater);
  EXPECT_EQ(verdict_text(d.verdict, "cka-qad", "qad"), "cka-qad > qad beyond noise");

  // Differences −0.004, −0.001, 0.004: the interval holds 0.
  const PairedDifference w = paired_difference({{1, 0.106}, {2, 0.119}, {3, 0.134}}, {{1, 0.11}, {2, 0.12}, {3, 0.13}});
  EXPECT_NEAR(w.stats.mean, -0.001 / 3.0, 1e-15);
  EXPECT_NEAR(*w.stats.std_dev, 0.00404145188432738, 1e-15);
  EXPECT_EQ(w.verdict, Verdict::kWithinNoise);
  EXPECT_EQ(verdict_text(w.verdict, "a", "b"), "within noise");

  const PairedDifference below = paired_difference({{1, 1.0}, {2, 2.0}, {3, 3.0}}, {{1, 3.0}, {2, 4.1}, {3, 5.0}});
  EXPECT_EQ(below.verdict, Verdict::kLess);
  EXPECT_EQ(verdict_text(below.verdict, "a", "b"), "a < b beyond noise");

  const PairedDifference single = paired_difference({{1, 1.0}}, {{1, 0.0}, {2, 0.0}});
  EXPECT_EQ(single.verdict, Verdict::kTooFew);
  EXPECT_EQ(single.stats.n, 1u);
  EXPECT_TRUE(paired_difference({{1, 1.0}}, {{2, 1.0}}).seeds.empty());
}

}  // namespace
}  // namespace qad::experiment
