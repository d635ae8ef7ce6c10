// `qad cka` output: exact CSV and JSON round trips (NaN included), the table's per-model means, and the
// plot file (one line per model, CKA = 1 reference, written atomically).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <iterator>
#include <sstream>

#include "util/remove_tree.h"
#include "report/cka_output.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "xml_check.h"

namespace {
using namespace qad::report;
namespace fs = std::filesystem;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<ModelCkaResult> sample() {
  return {{"PTQ", {{"layers.0", 0.9, 0.85, 0.91, 0.86}, {"layers.1", 1.0, 0.95, 0.99, 0.94}}},
          {"CKA-QAD, λ=0.1", {{"layers.0", 0.123456789012345, -0.0123, kNaN, 1e-300}}}};
}

void expect_same(const std::vector<ModelCkaResult>& a, const std::vector<ModelCkaResult>& b) {
  ASSERT_EQ(a.size(), b.size());
  auto same = [](double x, double y) { return (std::isnan(x) && std::isnan(y)) || x == y; };
  for (size_t m = 0; m < a.size(); ++m) {
    EXPECT_EQ(a[m].model, b[m].model);
    ASSERT_EQ(a[m].layers.size(), b[m].layers.size());
    for (size_t l = 0; l < a[m].layers.size(); ++l) {
      const auto &x = a[m].layers[l], &y = b[m].layers[l];
      EXPECT_EQ(x.layer, y.layer);
      EXPECT_TRUE(same(x.biased, y.biased) && same(x.debiased, y.debiased) &&
                  same(x.minibatch_biased, y.minibatch_biased) && same(x.minibatch_debiased, y.minibatch_debiased))
          << a[m].model << " " << x.layer;
    }
  }
}

TEST(CkaOutput, CsvRoundTripIsExact) {
  const std::string csv = format_cka(sample(), CkaFormat::kCsv);
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "model,layer,biased,debiased,minibatch_biased,minibatch_debiased");
  EXPECT_NE(csv.find("\"CKA-QAD, λ=0.1\",layers.0,0.123456789012345,-0.0123,nan,1e-300"), std::string::npos) << csv;
  expect_same(parse_cka_csv(csv), sample());
}

TEST(CkaOutput, JsonRoundTripIsExactAndNaNIsNull) {
  const std::string json = format_cka(sample(), CkaFormat::kJson);
  EXPECT_NE(json.find("\"minibatch_biased\": null"), std::string::npos);
  expect_same(parse_cka_json(json), sample());
  EXPECT_THROW(parse_cka_json("{\"models\": [{\"model\": \"a\"}]}", "x.json"), qad::Error);
  EXPECT_THROW(parse_cka_json("not json"), qad::Error);
}

TEST(CkaOutput, TableHasPerModelMeans) {
  const std::string table = format_cka(sample(), CkaFormat::kTable);
  // PTQ means: (0.9 + 1.0) / 2, (0.85 + 0.95) / 2, (0.91 + 0.99) / 2, (0.86 + 0.94) / 2.
  std::istringstream lines(table);
  std::vector<std::vector<std::string>> rows;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    rows.emplace_back(std::istream_iterator<std::string>(words), std::istream_iterator<std::string>());
  }
  ASSERT_EQ(rows.size(), 2u + 3u + 2u);  // header, rule, PTQ x2 + mean, CKA-QAD x1 + mean
  EXPECT_EQ(rows[4], (std::vector<std::string>{"PTQ", "mean", "0.95000", "0.90000", "0.95000", "0.90000"}));
  EXPECT_EQ(rows[2], (std::vector<std::string>{"PTQ", "layers.0", "0.90000", "0.85000", "0.91000", "0.86000"}));
  // A NaN layer value is left out of the mean, and an all-NaN column has a NaN mean.
  EXPECT_NE(table.find("nan"), std::string::npos);
}

TEST(CkaOutput, PlotHasOneLinePerModelAndTheTeacherReference) {
  const auto d = fs::temp_directory_path() / ("qad_report_cka_" + std::to_string(::getpid()));
  ::qad::remove_tree(d);
  fs::create_directories(d);
  std::vector<ModelCkaResult> results;
  for (std::string name : {"PTQ", "QAD", "CKA-QAD"}) {
    ModelCkaResult m{name, {}};
    for (int l = 0; l < 8; ++l) m.layers.push_back({"layers." + std::to_string(l), 0.9 + 0.01 * l, 0, 0, 0});
    results.push_back(m);
  }
  std::ostringstream out;
  write_cka_outputs(results, CkaFormat::kTable, d / "cka.svg", out);
  EXPECT_NE(out.str().find("CKA-QAD"), std::string::npos);
  const auto doc = qad::testing::parse_xml(qad::read_file(d / "cka.svg"));
  ASSERT_EQ(doc.error, "");
  EXPECT_EQ(doc.all("polyline").size(), 3u);
  // x ticks: "0".."7" from "layers.N"; the axis label keeps the prefix.
  size_t layer_ticks = 0;
  for (const auto* t : doc.all("text")) layer_ticks += t->text.size() == 1 && std::isdigit(t->text[0]);
  EXPECT_EQ(layer_ticks, 8u);
  bool axis_label = false, reference = false;
  for (const auto* t : doc.all("text")) axis_label = axis_label || t->text == "layer (layers.N)";
  for (const auto* l : doc.all("line")) reference = reference || (l->attrs.count("class") && l->attrs.at("class") == "reference");
  EXPECT_TRUE(axis_label);
  EXPECT_TRUE(reference);
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);
  ::qad::remove_tree(d);
}

TEST(CkaOutput, ShortLayerLabelsAndFormatNames) {
  EXPECT_EQ(short_layer_labels({"layers.0", "layers.10"}), (std::vector<std::string>{"0", "10"}));
  EXPECT_EQ(short_layer_labels({"layers.0", "embed"}), (std::vector<std::string>{"layers.0", "embed"}));
  EXPECT_EQ(short_layer_labels({"a.0", "b.1"}), (std::vector<std::string>{"a.0", "b.1"}));
  EXPECT_EQ(parse_cka_format("json"), CkaFormat::kJson);
  EXPECT_THROW(parse_cka_format("xml"), qad::Error);
}

}  // namespace
