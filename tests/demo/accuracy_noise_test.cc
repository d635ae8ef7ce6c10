// The demo's noise rule for accuracy gaps against hand-computed binomial standard errors.
#include <gtest/gtest.h>

#include <cmath>

#include "demo/accuracy_noise.h"

namespace qad::demo {
namespace {

TEST(AccuracyNoise, TwoStandardErrorsOfTheDifference) {
  // 200 questions, 78.5 % vs 75.0 %: sqrt(.785 * .215 / 200 + .75 * .25 / 200) = 0.0422063
  EXPECT_NEAR(accuracy_noise(0.785, 0.75, 200), 2 * 0.0422063, 1e-6);
  EXPECT_NEAR(accuracy_noise(1.0, 1.0, 50), 0.0, 1e-12);
  EXPECT_TRUE(std::isinf(accuracy_noise(0.5, 0.5, 0)));
}

TEST(AccuracyNoise, SmallGapsAreCalledWithinNoiseAndLargeOnesAreStatedWithTheirSign) {
  EXPECT_EQ(compare_accuracies(0.785, 0.75, 200), "78.5 % vs 75.0 %: within the test's noise (±8.4 points)");
  EXPECT_EQ(compare_accuracies(0.935, 0.535, 200), "93.5 % vs 53.5 %: +40.0 points (the test's noise ±7.9)");
  EXPECT_EQ(compare_accuracies(0.5, 0.9, 1000), "50.0 % vs 90.0 %: -40.0 points (the test's noise ±3.7)");
}

}  // namespace
}  // namespace qad::demo
