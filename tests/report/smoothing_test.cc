// The debiased EMA of `qad report --smooth`, against values worked out by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "report/smoothing.h"
#include "util/error.h"

namespace {
using namespace qad::report;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

TEST(Smoothing, DebiasedEmaByHand) {
  // W = 0.5: acc 0.5*0+0.5*4 = 2 -> 2/(1-0.5) = 4; acc 0.5*2+0.5*0 = 1 -> 1/(1-0.25) = 4/3;
  // acc 0.5*1+0.5*8 = 4.5 -> 4.5/(1-0.125) = 36/7.
  const auto s = ema_smooth({{0, 4}, {1, 0}, {5, 8}}, 0.5);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_DOUBLE_EQ(s[0].y, 4);
  EXPECT_DOUBLE_EQ(s[1].y, 4.0 / 3);
  EXPECT_DOUBLE_EQ(s[2].y, 36.0 / 7);
  EXPECT_EQ(s[2].x, 5);  // x is kept: points are weighted per record, not per step
  // A constant stays constant from the first point on (the debiasing at work).
  for (const auto& p : ema_smooth({{0, 3}, {1, 3}, {2, 3}, {3, 3}}, 0.9)) EXPECT_NEAR(p.y, 3, 1e-12);
}

TEST(Smoothing, NonFinitePointsBreakTheLineAndStayOutOfTheAverage) {
  const auto s = ema_smooth({{0, 4}, {1, kNaN}, {2, 0}}, 0.5);
  EXPECT_DOUBLE_EQ(s[0].y, 4);
  EXPECT_TRUE(std::isnan(s[1].y));
  EXPECT_DOUBLE_EQ(s[2].y, 4.0 / 3);  // as if the NaN were not there
}

TEST(Smoothing, ZeroIsOffAndTheWeightIsChecked) {
  const std::vector<Point> pts = {{0, 1}, {1, 5}};
  const auto s = ema_smooth(pts, 0);
  EXPECT_EQ(s[1].y, 5);
  EXPECT_THROW(ema_smooth(pts, 1), qad::Error);
  EXPECT_THROW(ema_smooth(pts, -0.1), qad::Error);
  EXPECT_THROW(ema_smooth(pts, kNaN), qad::Error);
}

}  // namespace
