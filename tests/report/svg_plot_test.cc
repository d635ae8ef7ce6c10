// Line charts and heatmaps: ticks against closed-form expectations, exact pixel positions computed by hand
// from the axis range, log scale, gaps at NaN, legend, reference lines, well-formed deterministic SVG.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "report/svg_common.h"
#include "report/svg_heatmap.h"
#include "report/svg_plot.h"
#include "report/ticks.h"
#include "util/error.h"
#include "xml_check.h"

namespace {
using namespace qad::report;
using qad::testing::parse_xml;
using qad::testing::XmlElement;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<double> ticks(double lo, double hi, int target) { return nice_ticks(lo, hi, target).values; }

TEST(NiceTicks, ClosedFormRanges) {
  // step = smallest {1,2,5} x 10^k >= (hi - lo) / target; the outer ticks enclose [lo, hi].
  EXPECT_EQ(ticks(0, 1, 5), (std::vector<double>{0, 0.2, 0.4, 0.6, 0.8, 1}));
  EXPECT_EQ(ticks(0.9, 1.0, 5), (std::vector<double>{0.9, 0.92, 0.94, 0.96, 0.98, 1.0}));
  EXPECT_EQ(ticks(0, 97, 5), (std::vector<double>{0, 20, 40, 60, 80, 100}));
  EXPECT_EQ(ticks(-3, 7, 5), (std::vector<double>{-4, -2, 0, 2, 4, 6, 8}));
  EXPECT_EQ(ticks(0.0013, 0.0087, 4), (std::vector<double>{0, 0.002, 0.004, 0.006, 0.008, 0.01}));
  EXPECT_EQ(ticks(1234, 98765, 5), (std::vector<double>{0, 20000, 40000, 60000, 80000, 100000}));
  EXPECT_EQ(ticks(3, 4, 1), (std::vector<double>{3, 4}));
  // A constant range is widened by 5 % each side: [4.75, 5.25] with step 0.1.
  EXPECT_EQ(ticks(5, 5, 5), (std::vector<double>{4.7, 4.8, 4.9, 5, 5.1, 5.2, 5.3}));
  EXPECT_EQ(nice_ticks(0.9, 1.0, 5).step, 0.02);
  EXPECT_THROW(nice_ticks(kNaN, 1, 5), qad::Error);
  EXPECT_THROW(nice_ticks(2, 1, 5), qad::Error);
}

TEST(NiceTicks, InvariantsOverRandomRanges) {
  std::mt19937_64 rng(20261123);
  std::uniform_real_distribution<double> exp10(-6, 9), unit(0, 1);
  for (int i = 0; i < 2000; ++i) {
    const double scale = std::pow(10.0, exp10(rng));
    double lo = (unit(rng) - 0.5) * scale, hi = lo + unit(rng) * scale;
    const int target = 2 + static_cast<int>(unit(rng) * 8);
    const Ticks t = nice_ticks(lo, hi, target);
    ASSERT_GE(t.values.size(), 2u);
    EXPECT_LE(t.values.front(), lo + 1e-9 * scale) << lo << " " << hi;
    EXPECT_GE(t.values.back(), hi - 1e-9 * scale) << lo << " " << hi;
    EXPECT_LE(static_cast<int>(t.values.size()) - 1, target + 2) << lo << " " << hi << " target " << target;
    const double mantissa = t.step / std::pow(10.0, std::floor(std::log10(t.step) + 1e-9));
    EXPECT_TRUE(std::abs(mantissa - 1) < 1e-9 || std::abs(mantissa - 2) < 1e-9 || std::abs(mantissa - 5) < 1e-9)
        << "step " << t.step;
  }
}

TEST(LogTicks, DecadesAndMultiples) {
  // Within two decades: the 1-2-5 multiples just enclosing [lo, hi].
  EXPECT_EQ(log_ticks(0.03, 0.8).values, (std::vector<double>{0.02, 0.05, 0.1, 0.2, 0.5, 1}));
  EXPECT_EQ(log_ticks(0.01, 1).values, (std::vector<double>{0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1}));
  // Nine decades: every second power of ten, aligned to even exponents.
  EXPECT_EQ(log_ticks(1e-3, 5e4).values, (std::vector<double>{1e-4, 1e-2, 1, 1e2, 1e4, 1e6}));
  EXPECT_THROW(log_ticks(0, 1), qad::Error);
}

TEST(TickLabels, DecimalsFollowTheStep) {
  EXPECT_EQ(format_tick(0.92, 0.02, 1), "0.92");
  EXPECT_EQ(format_tick(0.9, 0.02, 1), "0.90");
  EXPECT_EQ(format_tick(20000, 20000, 100000), "20k");
  EXPECT_EQ(format_tick(1500000, 500000, 3e6), "1.5M");
  EXPECT_EQ(format_tick(2e9, 1e9, 5e9), "2G");
  EXPECT_EQ(format_tick(-0.0, 0.1, 1), "0");
  EXPECT_EQ(format_tick(1e-5, 0, 1), "1e-5");
  EXPECT_EQ(format_tick(-2e-6, 0, 1), "-2e-6");
  EXPECT_EQ(format_tick(0.2, 0, 1), "0.2");  // log axis: the value's own digits
  EXPECT_EQ(format_number(0.123456, 4), "0.1235");
  EXPECT_EQ(format_number(1234.6, 4), "1235");
  EXPECT_EQ(format_number(kNaN), "nan");
  EXPECT_EQ(format_number(-kInf), "-inf");
}

TEST(SvgCommon, EscapingCoordinatesTextWidth) {
  EXPECT_EQ(xml_escape("a<b & \"c\" 'd'>\x01"), "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;");
  EXPECT_EQ(fmt_coord(190.0), "190");
  EXPECT_EQ(fmt_coord(262.5), "262.5");
  EXPECT_EQ(fmt_coord(-0.001), "0");
  EXPECT_EQ(fmt_coord(1.0 / 3), "0.33");
  // Arial advance widths: "0.95" = (556 + 278 + 556 + 556) / 1000 em.
  EXPECT_DOUBLE_EQ(text_width("0.95", 11), 1.946 * 11);
  EXPECT_LT(text_width("iiii", 12), text_width("MMMM", 12));
  EXPECT_LE(text_width(ellipsize("a-very-long-run-name-indeed", 12, 60), 12), 60);
  EXPECT_EQ(viridis(0), "#440154");
  EXPECT_EQ(viridis(1), "#fde725");
  EXPECT_EQ(viridis(0.5), "#21918c");
  EXPECT_EQ(palette_colour(0), "#0072B2");
  EXPECT_EQ(palette_colour(8), palette_colour(0));
}

// Fixed margins make the plot area known: x in [60, 560], y in [30, 350].
LineChart fixed_chart() {
  LineChart c;
  c.width = 600;
  c.height = 400;
  c.margins = Margins{60, 40, 30, 50};
  c.legend = false;
  return c;
}

std::vector<std::string> polylines(const std::string& svg) {
  const auto doc = parse_xml(svg);
  EXPECT_EQ(doc.error, "");
  std::vector<std::string> out;
  for (const auto* e : doc.all("polyline")) out.push_back(e->attrs.at("points"));
  return out;
}

TEST(LineChart, PointsMapToHandComputedPixels) {
  auto c = fixed_chart();
  // y ticks: target = 320 / 45 -> 7 intervals, raw step 10 / 7 -> 2; domain [0, 10]. x domain = data range.
  c.series.push_back({"a", {{0, 0}, {2.5, 5}, {10, 10}}});
  const auto L = layout_line_chart(c);
  EXPECT_EQ(L.plot_left, 60);
  EXPECT_EQ(L.plot_width, 500);
  EXPECT_EQ(L.plot_top, 30);
  EXPECT_EQ(L.plot_height, 320);
  EXPECT_EQ(L.y_lo, 0);
  EXPECT_EQ(L.y_hi, 10);
  // x: 60 + x / 10 * 500; y: 350 - y / 10 * 320.
  EXPECT_EQ(polylines(render_line_chart(c)), std::vector<std::string>{"60,350 185,190 560,30"});
}

TEST(LineChart, ErrorBarsWidenTheRangeAndLandOnHandComputedPixels) {
  auto c = fixed_chart();
  // Points at y 2 and 6 with bars [1, 3] and [4, 10]: the domain must reach 10 (the bar), not 6.
  Point a{0, 2, 1, 3}, b{10, 6, 4, 10};
  c.series.push_back({"a", {a, b}});
  const auto L = layout_line_chart(c);
  EXPECT_EQ(L.y_lo, 0);
  EXPECT_EQ(L.y_hi, 10);
  const auto doc = parse_xml(render_line_chart(c));
  ASSERT_TRUE(doc.error.empty()) << doc.error;
  std::vector<std::string> paths;
  for (const auto* e : doc.all("path")) {
    if (e->attrs.count("stroke-width") && e->attrs.at("stroke-width") == "1.5") paths.push_back(e->attrs.at("d"));
  }
  // x = 60 + x / 10 * 500; y = 350 - y / 10 * 320; caps 4 px each side.
  EXPECT_EQ(paths, (std::vector<std::string>{"M60,318V254M56,318H64M56,254H64", "M560,222V30M556,222H564M556,30H564"}));
  // A point without a bar draws none.
  c.series[0].points = {{0, 2}, {10, 6}};
  EXPECT_EQ(render_line_chart(c).find("error-bar"), std::string::npos);
}

TEST(LineChart, YDomainSnapsOutwardToTicks) {
  auto c = fixed_chart();
  // Data y in [0.905, 0.97], 7 intervals: step 0.01, domain [0.90, 0.97]; x domain [1, 3].
  c.series.push_back({"a", {{1, 0.905}, {2, 0.935}, {3, 0.97}}});
  const auto L = layout_line_chart(c);
  EXPECT_DOUBLE_EQ(L.y_lo, 0.9);
  EXPECT_DOUBLE_EQ(L.y_hi, 0.97);
  // (2, 0.935): x = 60 + 0.5 * 500 = 310; y = 350 - 0.035 / 0.07 * 320 = 190.
  // (1, 0.905): y = 350 - 0.005 / 0.07 * 320 = 327.142857 -> 327.14.
  EXPECT_EQ(polylines(render_line_chart(c)), std::vector<std::string>{"60,327.14 310,190 560,30"});
  ASSERT_EQ(L.y_ticks.size(), 8u);
  EXPECT_EQ(L.y_ticks.front().label, "0.90");
  EXPECT_EQ(L.y_ticks.back().label, "0.97");
}

TEST(LineChart, LogScaleMapsDecadesLinearly) {
  auto c = fixed_chart();
  c.log_y = true;
  c.series.push_back({"a", {{0, 0.01}, {5, 0.1}, {10, 1}, {11, 0}, {12, -1}}});  // y <= 0 is skipped on a log axis
  const auto L = layout_line_chart(c);
  EXPECT_DOUBLE_EQ(L.y_lo, 0.01);
  EXPECT_DOUBLE_EQ(L.y_hi, 1);
  EXPECT_EQ(L.x_hi, 10);  // the skipped points do not stretch the x axis
  // log10 spans [-2, 0]: 0.1 sits half-way, y = 190. x: 60 + x / 10 * 500.
  EXPECT_EQ(polylines(render_line_chart(c)), std::vector<std::string>{"60,350 310,190 560,30"});
  std::vector<std::string> labels;
  for (const auto& t : L.y_ticks) labels.push_back(t.label);
  EXPECT_EQ(labels, (std::vector<std::string>{"0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1"}));
}

TEST(LineChart, NonFinitePointsBreakTheLine) {
  auto c = fixed_chart();
  c.marker_max_points = 0;  // no markers except for isolated points
  c.series.push_back({"a", {{0, 1}, {1, kNaN}, {2, 3}, {3, kInf}, {4, 5}, {5, 6}, {6, -kInf}}});
  const std::string svg = render_line_chart(c);
  const auto doc = parse_xml(svg);
  ASSERT_EQ(doc.error, "");
  // Segments [1], [3], [5, 6]: one polyline, markers on the two isolated points.
  ASSERT_EQ(doc.all("polyline").size(), 1u);
  EXPECT_EQ(std::count(doc.all("polyline")[0]->attrs.at("points").begin(),
                       doc.all("polyline")[0]->attrs.at("points").end(), ','),
            2);
  EXPECT_EQ(doc.all("circle").size(), 2u);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  const auto L = layout_line_chart(c);
  EXPECT_EQ(L.y_lo, 1);  // infinities do not enter the range: [1, 6], step 1
  EXPECT_EQ(L.y_hi, 6);
}

TEST(LineChart, LegendEntriesAreEscapedAndInSeriesOrder) {
  LineChart c;
  c.title = "CKA <per layer> & more";
  for (std::string name : {"PTQ", "QAD", "CKA-QAD", "", "x<y & \"z\" with a very long name that will not fit at all"}) {
    c.series.push_back({name, {{0, 0.9}, {1, 0.95}}});
  }
  const std::string svg = render_line_chart(c);
  const auto doc = parse_xml(svg);
  ASSERT_EQ(doc.error, "");
  std::vector<std::string> legend;
  int entry_depth = -1;  // depth of the enclosing <g class="legend-entry">, -1 outside one
  for (const auto& e : doc.elements) {
    if (entry_depth >= 0 && e.depth <= entry_depth) entry_depth = -1;
    if (e.name == "g" && e.attrs.count("class") && e.attrs.at("class") == "legend-entry") entry_depth = e.depth;
    if (entry_depth >= 0 && e.name == "text") legend.push_back(e.text);
  }
  ASSERT_EQ(legend.size(), 4u);  // the unnamed series has no entry
  EXPECT_EQ(legend[0], "PTQ");
  EXPECT_EQ(legend[1], "QAD");
  EXPECT_EQ(legend[2], "CKA-QAD");
  EXPECT_EQ(legend[3].rfind("x<y & \"z\"", 0), 0u);
  EXPECT_EQ(legend[3].substr(legend[3].size() - 3), "…");
  // The full name survives in the tooltip; the title is escaped.
  EXPECT_NE(svg.find("<title>x&lt;y &amp; &quot;z&quot; with a very long name that will not fit at all</title>"),
            std::string::npos);
  EXPECT_NE(svg.find("CKA &lt;per layer&gt; &amp; more"), std::string::npos);
  // Markers on these short series: circle, square, diamond per series (plus one in each legend swatch).
  EXPECT_EQ(doc.all("circle").size(), 3u);
  EXPECT_EQ(doc.all("rect").size(), 2u + 3u);  // background + clip rect + squares (2 points + legend)
}

TEST(LineChart, ReferenceLineAndRangeOverride) {
  auto c = fixed_chart();
  c.series.push_back({"a", {{0, 0.90}, {1, 0.99}}});
  c.reference_lines.push_back({1.0, "teacher"});
  c.y_min = 0.95;  // clips the first point; the domain ends exactly at the override
  const auto L = layout_line_chart(c);
  EXPECT_DOUBLE_EQ(L.y_lo, 0.95);
  EXPECT_DOUBLE_EQ(L.y_hi, 1.0);  // the reference line pulls the top up to 1
  const auto doc = parse_xml(render_line_chart(c));
  ASSERT_EQ(doc.error, "");
  const XmlElement* ref = nullptr;
  for (const auto* e : doc.all("line")) {
    if (e->attrs.count("class") && e->attrs.at("class") == "reference") ref = e;
  }
  ASSERT_NE(ref, nullptr);
  EXPECT_EQ(ref->attrs.at("y1"), "30");  // y = 1 is the top of the plot
  bool clipped = false;
  for (const auto* g : doc.all("g")) clipped = clipped || g->attrs.count("clip-path");
  EXPECT_TRUE(clipped);
}

TEST(LineChart, BaselineInItsColourFaintRawSeriesAndTheLegend) {
  auto c = fixed_chart();
  c.legend = true;  // into the fixed right margin
  c.series.push_back({"raw", {{0, 1}, {10, 9}}, 1, true});
  c.series.push_back({"QAD", {{0, 0}, {10, 10}}, 1});
  c.reference_lines.push_back({5, "PTQ 5", 2, "PTQ (baseline)"});
  const auto doc = parse_xml(render_line_chart(c));
  ASSERT_EQ(doc.error, "");
  const XmlElement* base = nullptr;
  for (const auto* e : doc.all("line")) {
    if (e->attrs.count("class") && e->attrs.at("class") == "reference baseline") base = e;
  }
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(base->attrs.at("y1"), "190");  // 350 - 5 / 10 * 320
  EXPECT_EQ(base->attrs.at("y2"), "190");
  EXPECT_EQ(base->attrs.at("stroke"), std::string(palette_colour(2)));
  const auto lines = doc.all("polyline");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]->attrs.at("class"), "series raw");
  EXPECT_EQ(lines[0]->attrs.at("stroke-opacity"), "0.28");
  EXPECT_EQ(lines[1]->attrs.at("class"), "series");
  EXPECT_EQ(lines[1]->attrs.count("stroke-opacity"), 0u);
  // Markers: QAD's two points and its legend swatch; the faint series has none and no legend entry.
  EXPECT_EQ(doc.all("rect").size(), 2u + 3u);  // background, clip rect, squares
  std::vector<std::string> legend;
  for (const auto& e : doc.elements) {
    if (e.name == "text" && e.depth == 3) legend.push_back(e.text);  // <svg><g legend><g entry><text>
  }
  EXPECT_EQ(legend, (std::vector<std::string>{"QAD", "PTQ (baseline)"}));
}

TEST(LineChart, UnlabelledExplicitTicksOnlyWidenTheDomain) {
  auto c = fixed_chart();
  c.series.push_back({"a", {{0, 1}, {1, 2}}});
  c.x_ticks = {{-0.6, ""}, {0, "first model"}, {1, "second model"}, {1.4, ""}};
  const auto L = layout_line_chart(c);
  EXPECT_DOUBLE_EQ(L.x_lo, -0.66);  // 3 % of the 2.0 span beyond the outer ticks
  EXPECT_DOUBLE_EQ(L.x_hi, 1.46);
  ASSERT_EQ(L.x_ticks.size(), 2u);  // no label is thinned out: the gap between them is ~236 px
  EXPECT_EQ(L.x_ticks[0].label, "first model");
  EXPECT_EQ(L.x_ticks[1].label, "second model");
}

TEST(LineChart, EmptyChartSaysNoDataAndOutputIsDeterministic) {
  LineChart c;
  c.title = "nothing";
  c.series.push_back({"a", {{kNaN, 1}, {1, kNaN}}});
  const std::string svg = render_line_chart(c);
  EXPECT_EQ(parse_xml(svg).error, "");
  EXPECT_NE(svg.find(">no data<"), std::string::npos);
  EXPECT_EQ(svg, render_line_chart(c));
}

TEST(LineChart, LargeStepCountsGetShortLabels) {
  LineChart c;
  c.series.push_back({"a", {{0, 1}, {250000, 2}}});
  const auto L = layout_line_chart(c);
  for (const auto& t : L.x_ticks) EXPECT_TRUE(t.label == "0" || t.label.back() == 'k') << t.label;
}

TEST(Heatmap, ColoursFollowTheScaleAndMissingIsGrey) {
  Heatmap h;
  h.title = "cka";
  h.row_labels = {"layers.0", "layers.1"};
  h.col_labels = {"0", "100", "200"};
  h.values = {{0.9, 0.95, 1.0}, {kNaN, 0.925}};  // the short row is missing its last cell
  h.v_min = 0.9;
  h.v_max = 1.0;
  const std::string svg = render_heatmap(h);
  const auto doc = parse_xml(svg);
  ASSERT_EQ(doc.error, "");
  std::vector<std::string> fills;
  for (const auto* r : doc.all("rect")) {
    if (r->depth == 2) fills.push_back(r->attrs.at("fill"));  // cells sit in <svg><g class="cells">
  }
  EXPECT_EQ(fills, (std::vector<std::string>{"#440154", viridis(0.5), "#fde725", "#d9d9d9", viridis(0.25),
                                             "#d9d9d9"}));
  EXPECT_NE(svg.find(">missing<"), std::string::npos);
  EXPECT_EQ(svg, render_heatmap(h));
  h.values.push_back({1});
  EXPECT_THROW(render_heatmap(h), qad::Error);  // three rows of values, two labels
}

}  // namespace
