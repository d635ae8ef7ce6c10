#include <gtest/gtest.h>

#include "util/progress.h"

TEST(Progress, FormatsDurations) {
  EXPECT_EQ(qad::Progress::format_duration(0), "0:00");
  EXPECT_EQ(qad::Progress::format_duration(75.4), "1:15");
  EXPECT_EQ(qad::Progress::format_duration(3723), "1:02:03");
  EXPECT_EQ(qad::Progress::format_duration(-1), "?");
}
