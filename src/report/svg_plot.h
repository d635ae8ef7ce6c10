// SVG line charts for the run report and `qad cka --plot`: named series, 1-2-5 ticks with grid lines,
// optional log y, legend, markers on short series, gaps at missing/non-finite points, reference lines.
// Output is deterministic text that needs no plotting runtime and is safe to inline into HTML.
#pragma once
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace qad::report {

struct Point {
  double x = 0;
  double y = 0;  // NaN/Inf (or <= 0 on a log axis) = missing: the line breaks there
  // An error bar from lo to hi (e.g. a 95 % interval over seeds), drawn as a capped vertical whisker when both
  // are finite; the y range includes it.
  double lo = std::numeric_limits<double>::quiet_NaN();
  double hi = std::numeric_limits<double>::quiet_NaN();
  bool has_error_bar() const { return std::isfinite(lo) && std::isfinite(hi); }
};

struct Series {
  std::string name;
  std::vector<Point> points;  // drawn in x order
  std::optional<size_t> style;  // palette colour / marker index; default: the series' position. Lets a
                                // run keep its colour in every chart even where other runs are absent.
  bool faint = false;           // thin and translucent, no markers, no legend entry: the raw values behind
                                // a smoothed line
};

// A dashed horizontal line across the plot, e.g. CKA = 1 or a PTQ baseline, labelled at its right end.
struct ReferenceLine {
  double y = 0;
  std::string label;
  std::optional<size_t> style;  // palette colour (a run's baseline in its run's colour); default: grey
  std::string legend;           // when set, the legend lists the line under this name with a dashed swatch
};

struct AxisTick {
  double value = 0;
  std::string label;
};

struct Margins {
  double left = 0, right = 0, top = 0, bottom = 0;
};

struct LineChart {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<Series> series;
  std::vector<ReferenceLine> reference_lines;
  bool log_y = false;
  std::optional<double> y_min, y_max;  // override the data range at that end; lines outside are clipped
  std::vector<AxisTick> x_ticks;       // explicit x ticks (layer indices...); empty = nice ticks. One with an
                                       // empty label only widens the x domain (room around categories)
  double width = 720;
  double height = 400;
  std::optional<Margins> margins;  // fixed margins instead of the computed ones (the legend then goes
                                   // into the right margin as usual)
  size_t marker_max_points = 30;   // series with at most this many finite points get markers
  bool legend = true;              // shown when on and some series has a name
  std::string id;                  // unique within a page (clip path ids); empty = derived from content
};

// Where everything goes; render_line_chart draws exactly this. Exposed for tests and for callers that
// overlay their own marks.
struct ChartLayout {
  double plot_left = 0, plot_top = 0, plot_width = 0, plot_height = 0;
  double x_lo = 0, x_hi = 1;  // x domain
  double y_lo = 0, y_hi = 1;  // y domain (data units, also on a log axis)
  bool log_y = false;
  std::vector<AxisTick> x_ticks, y_ticks;  // labelled ticks inside the domains
  double legend_left = 0;                  // x of the legend column (when there is a legend)
  bool has_data = false;

  double map_x(double x) const;
  double map_y(double y) const;  // log axis: by log10
};

ChartLayout layout_line_chart(const LineChart& chart);
std::string render_line_chart(const LineChart& chart);

}  // namespace qad::report
