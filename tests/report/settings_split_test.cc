// Settings compaction for the comparison tables: shared, partly shared and differing settings, the
// "common settings" sentence, and run.json configs flattened with dots.
#include <gtest/gtest.h>

#include "report/settings_split.h"

namespace {
using namespace qad::report;

TEST(SettingsSplit, SharedPartlySharedAndDiffering) {
  const std::vector<Settings> rows = {{{"lr", "1e-5"}, {"steps", "800"}, {"calib", "max"}},
                                      {{"lr", "1e-5"}, {"steps", "400"}},
                                      {{"lr", "1e-5"}, {"steps", "800"}, {"cka", "0.1"}}};
  const SettingsSplit s = split_settings(rows);
  EXPECT_EQ(s.differing, std::vector<std::string>{"steps"});
  ASSERT_EQ(s.shared.size(), 3u);
  EXPECT_EQ(s.shared[0].name, "lr");
  EXPECT_EQ(s.shared[0].rows, (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(s.shared[1].name, "calib");
  EXPECT_EQ(s.shared[1].rows, std::vector<size_t>{0});
  EXPECT_EQ(describe_shared(s.shared, {"PTQ", "QAD", "CKA"}),
            "Common settings: lr = 1e-5. Only in PTQ: calib = max. Only in CKA: cka = 0.1.");
  EXPECT_EQ(describe_shared(split_settings({{{"a", "1"}}}).shared, {"one"}), "Settings: a = 1.");
  EXPECT_EQ(describe_shared({}, {"a", "b"}), "");
}

TEST(SettingsSplit, ConfigFlattensWithDots) {
  const auto config = nlohmann::ordered_json::parse(
      R"({"run":{"device":"cpu","steps":10},"loss":{"cka":0.1,"cka_layers":["layers.0","layers.3"]},"name":"x","empty":{}})");
  EXPECT_EQ(flatten_config(config), (Settings{{"run.device", "cpu"},
                                              {"run.steps", "10"},
                                              {"loss.cka", "0.1"},
                                              {"loss.cka_layers", R"(["layers.0","layers.3"])"},
                                              {"name", "x"},
                                              {"empty", "{}"}}));
}

}  // namespace
