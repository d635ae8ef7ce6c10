// Line-chart layout and SVG rendering (see svg_plot.h).
#include "report/svg_plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "report/svg_common.h"
#include "report/ticks.h"

namespace qad::report {
namespace {

constexpr double kTitlePx = 15, kLabelPx = 12.5, kTickPx = 11, kLegendPx = 12;
constexpr double kLegendSwatch = 24, kLegendGap = 6, kLegendRow = 18;

bool usable(const Point& p, bool log_y) {
  return std::isfinite(p.x) && std::isfinite(p.y) && (!log_y || p.y > 0);
}

bool in_legend(const Series& s) { return !s.name.empty() && !s.faint; }

bool has_legend(const LineChart& c) {
  if (!c.legend) return false;
  return std::any_of(c.series.begin(), c.series.end(), in_legend) ||
         std::any_of(c.reference_lines.begin(), c.reference_lines.end(),
                     [](const ReferenceLine& r) { return !r.legend.empty(); });
}

double legend_text_max(const LineChart& c) { return std::max(80.0, c.width * 0.26); }

double legend_width(const LineChart& c) {
  double w = 0;
  for (const auto& s : c.series) {
    if (in_legend(s)) w = std::max(w, text_width(ellipsize(s.name, kLegendPx, legend_text_max(c)), kLegendPx));
  }
  for (const auto& r : c.reference_lines) {
    w = std::max(w, text_width(ellipsize(r.legend, kLegendPx, legend_text_max(c)), kLegendPx));
  }
  return kLegendSwatch + kLegendGap + w;
}

std::vector<AxisTick> labelled(const Ticks& t, double lo, double hi) {
  double largest = 0;
  for (double v : t.values) largest = std::max(largest, std::abs(v));
  std::vector<AxisTick> out;
  const double tol = 1e-9 * std::max(1.0, std::abs(hi - lo));
  for (double v : t.values) {
    if (v >= lo - tol && v <= hi + tol) out.push_back({v, format_tick(v, t.step, largest)});
  }
  return out;
}

}  // namespace

double ChartLayout::map_x(double x) const {
  return plot_left + (x - x_lo) / (x_hi - x_lo) * plot_width;
}

double ChartLayout::map_y(double y) const {
  const double f = log_y ? (std::log10(y) - std::log10(y_lo)) / (std::log10(y_hi) - std::log10(y_lo))
                         : (y - y_lo) / (y_hi - y_lo);
  return plot_top + plot_height - f * plot_height;
}

ChartLayout layout_line_chart(const LineChart& c) {
  ChartLayout L;
  L.log_y = c.log_y;
  const double inf = std::numeric_limits<double>::infinity();
  double xmin = inf, xmax = -inf, ymin = inf, ymax = -inf;
  for (const auto& s : c.series) {
    for (const auto& p : s.points) {
      if (!usable(p, c.log_y)) continue;
      xmin = std::min(xmin, p.x), xmax = std::max(xmax, p.x);
      ymin = std::min(ymin, p.y), ymax = std::max(ymax, p.y);
      if (p.has_error_bar() && (!c.log_y || p.lo > 0)) ymin = std::min(ymin, p.lo), ymax = std::max(ymax, p.hi);
    }
  }
  L.has_data = xmin <= xmax;
  for (const auto& r : c.reference_lines) {
    if (std::isfinite(r.y) && (!c.log_y || r.y > 0)) ymin = std::min(ymin, r.y), ymax = std::max(ymax, r.y);
  }
  if (c.y_min) ymin = *c.y_min;
  if (c.y_max) ymax = *c.y_max;
  if (!(ymin <= ymax)) ymin = c.log_y ? 0.1 : 0, ymax = 1;
  if (!L.has_data) xmin = 0, xmax = 1;

  // y: the domain snaps outward to whole ticks unless the caller fixed that end.
  const double top = c.margins ? c.margins->top : (c.title.empty() ? 14 : 38);
  const double bottom = c.margins ? c.margins->bottom : 8 + 18 + (c.x_label.empty() ? 0 : 20) + 6;
  L.plot_top = top;
  L.plot_height = std::max(20.0, c.height - top - bottom);
  const Ticks yt = c.log_y ? log_ticks(ymin, ymax)
                           : nice_ticks(ymin, ymax, std::clamp(static_cast<int>(L.plot_height / 45), 3, 10));
  L.y_lo = c.y_min ? *c.y_min : yt.values.front();
  L.y_hi = c.y_max ? *c.y_max : yt.values.back();
  if (L.y_hi <= L.y_lo) L.y_hi = L.y_lo + (c.log_y ? L.y_lo * 9 : 1);
  L.y_ticks = labelled(yt, L.y_lo, L.y_hi);

  double max_ylabel = 0;
  for (const auto& t : L.y_ticks) max_ylabel = std::max(max_ylabel, text_width(t.label, kTickPx));
  const bool legend = has_legend(c);
  const double legend_w = legend ? legend_width(c) : 0;
  if (c.margins) {
    L.plot_left = c.margins->left;
    L.plot_width = std::max(20.0, c.width - c.margins->left - c.margins->right);
  } else {
    L.plot_left = (c.y_label.empty() ? 10 : 32) + max_ylabel + 8;
    const double right = legend ? legend_w + 28 : 18;
    L.plot_width = std::max(20.0, c.width - L.plot_left - right);
  }
  L.legend_left = L.plot_left + L.plot_width + 16;

  // x: the data range exactly (time series fill the width), or the explicit ticks with a little padding.
  if (!c.x_ticks.empty()) {
    for (const auto& t : c.x_ticks) xmin = std::min(xmin, t.value), xmax = std::max(xmax, t.value);
    const double pad = xmax > xmin ? 0.03 * (xmax - xmin) : 0.5;
    L.x_lo = xmin - pad, L.x_hi = xmax + pad;
    // Unlabelled ticks only widen the domain. Labels that would overlap are thinned out (every k-th, keeping
    // the first), judged by the narrowest gap between labelled ticks.
    std::vector<AxisTick> labelled_ticks;
    for (const auto& t : c.x_ticks) {
      if (!t.label.empty()) labelled_ticks.push_back(t);
    }
    double widest = 0, gap = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < labelled_ticks.size(); ++i) {
      widest = std::max(widest, text_width(labelled_ticks[i].label, kTickPx));
      if (i > 0) gap = std::min(gap, std::abs(labelled_ticks[i].value - labelled_ticks[i - 1].value));
    }
    const double per_tick = labelled_ticks.size() < 2 ? L.plot_width : gap / (L.x_hi - L.x_lo) * L.plot_width;
    const size_t every = std::max<size_t>(1, static_cast<size_t>(std::ceil((widest + 8) / per_tick)));
    for (size_t i = 0; i < labelled_ticks.size(); i += every) L.x_ticks.push_back(labelled_ticks[i]);
  } else {
    if (xmax <= xmin) xmin -= 0.5, xmax += 0.5;
    L.x_lo = xmin, L.x_hi = xmax;
    // About one tick per 75 px, at least 4 intervals so that short axes do not end up with two labels.
    int target = std::clamp(static_cast<int>(L.plot_width / 75), 4, 10);
    // Fewer ticks when the labels are long (large step counts): keep ~12 px between labels.
    for (; target > 2; --target) {
      const auto ticks = labelled(nice_ticks(xmin, xmax, target), xmin, xmax);
      double widest = 0;
      for (const auto& t : ticks) widest = std::max(widest, text_width(t.label, kTickPx));
      if (ticks.size() < 2 || (widest + 12) * static_cast<double>(ticks.size()) <= L.plot_width) break;
    }
    L.x_ticks = labelled(nice_ticks(xmin, xmax, target), xmin, xmax);
  }
  return L;
}

namespace {

// Marker shapes differ per series so that lines stay distinguishable without colour.
std::string marker(size_t index, double x, double y, std::string_view colour) {
  const double r = 3.6;
  switch (index % 5) {
    case 0:
      return fmt::format(R"(<circle cx="{}" cy="{}" r="{}" fill="{}"/>)", fmt_coord(x), fmt_coord(y), fmt_coord(r),
                         colour);
    case 1:
      return fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>)", fmt_coord(x - r * 0.85),
                         fmt_coord(y - r * 0.85), fmt_coord(r * 1.7), fmt_coord(r * 1.7), colour);
    case 2:
      return fmt::format(R"(<polygon points="{},{} {},{} {},{} {},{}" fill="{}"/>)", fmt_coord(x), fmt_coord(y - r * 1.2),
                         fmt_coord(x + r * 1.2), fmt_coord(y), fmt_coord(x), fmt_coord(y + r * 1.2),
                         fmt_coord(x - r * 1.2), fmt_coord(y), colour);
    case 3:
      return fmt::format(R"(<polygon points="{},{} {},{} {},{}" fill="{}"/>)", fmt_coord(x), fmt_coord(y - r * 1.2),
                         fmt_coord(x + r * 1.1), fmt_coord(y + r * 0.8), fmt_coord(x - r * 1.1), fmt_coord(y + r * 0.8),
                         colour);
    default:
      return fmt::format(R"(<polygon points="{},{} {},{} {},{}" fill="{}"/>)", fmt_coord(x), fmt_coord(y + r * 1.2),
                         fmt_coord(x + r * 1.1), fmt_coord(y - r * 0.8), fmt_coord(x - r * 1.1), fmt_coord(y - r * 0.8),
                         colour);
  }
}

// Short series get a marker at every point; the legend then shows the marker too.
bool draws_markers(const LineChart& c, const Series& s) {
  if (s.faint) return false;
  const auto finite = std::count_if(s.points.begin(), s.points.end(), [&](const Point& p) { return usable(p, c.log_y); });
  return static_cast<size_t>(finite) <= c.marker_max_points;
}

std::string dash_for(size_t index) { return index >= 8 ? R"( stroke-dasharray="6 3")" : ""; }

std::string chart_id(const LineChart& c) {
  if (!c.id.empty()) return c.id;
  std::string key = c.title + "|" + c.x_label + "|" + c.y_label;
  for (const auto& s : c.series) key += "|" + s.name + fmt::format(":{}", s.points.size());
  return "chart-" + stable_id(key);
}

}  // namespace

std::string render_line_chart(const LineChart& c) {
  const ChartLayout L = layout_line_chart(c);
  const std::string id = xml_escape(chart_id(c));
  const double right = L.plot_left + L.plot_width, bottom = L.plot_top + L.plot_height;
  std::string out;
  out += fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" class="qad-chart" id="{}" width="{}" height="{}" viewBox="0 0 {} {}" font-family="{}" role="img">)"
      "\n",
      id, fmt_coord(c.width), fmt_coord(c.height), fmt_coord(c.width), fmt_coord(c.height), kFontFamily);
  out += fmt::format("<title>{}</title>\n", xml_escape(c.title.empty() ? "chart" : c.title));
  out += fmt::format(R"(<rect width="{}" height="{}" fill="#ffffff"/>)" "\n", fmt_coord(c.width), fmt_coord(c.height));
  out += fmt::format(R"(<defs><clipPath id="{}-clip"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath></defs>)"
                     "\n",
                     id, fmt_coord(L.plot_left - 4), fmt_coord(L.plot_top - 4), fmt_coord(L.plot_width + 8),
                     fmt_coord(L.plot_height + 8));

  // Grid and tick labels.
  out += R"(<g class="grid" stroke="#e3e3e3" stroke-width="1">)" "\n";
  for (const auto& t : L.y_ticks) {
    const double y = L.map_y(t.value);
    out += fmt::format(R"(<line x1="{}" y1="{}" x2="{}" y2="{}"/>)" "\n", fmt_coord(L.plot_left), fmt_coord(y),
                       fmt_coord(right), fmt_coord(y));
  }
  for (const auto& t : L.x_ticks) {
    const double x = L.map_x(t.value);
    out += fmt::format(R"(<line x1="{}" y1="{}" x2="{}" y2="{}"/>)" "\n", fmt_coord(x), fmt_coord(L.plot_top),
                       fmt_coord(x), fmt_coord(bottom));
  }
  out += "</g>\n";
  out += fmt::format(R"(<g class="ticks" font-size="{}" fill="#444444">)" "\n", fmt_coord(kTickPx));
  for (const auto& t : L.y_ticks) {
    out += fmt::format(R"(<text x="{}" y="{}" text-anchor="end">{}</text>)" "\n", fmt_coord(L.plot_left - 6),
                       fmt_coord(L.map_y(t.value) + kTickPx * 0.35), xml_escape(t.label));
  }
  for (const auto& t : L.x_ticks) {
    out += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle">{}</text>)" "\n", fmt_coord(L.map_x(t.value)),
                       fmt_coord(bottom + 17), xml_escape(t.label));
  }
  out += "</g>\n";
  out += fmt::format(R"(<path class="axes" d="M{},{}V{}H{}" fill="none" stroke="#555555" stroke-width="1"/>)" "\n",
                     fmt_coord(L.plot_left), fmt_coord(L.plot_top), fmt_coord(bottom), fmt_coord(right));

  // Reference lines, drawn under the data.
  for (const auto& r : c.reference_lines) {
    if (!std::isfinite(r.y) || (c.log_y && r.y <= 0) || r.y < L.y_lo || r.y > L.y_hi) continue;
    const double y = L.map_y(r.y);
    if (r.style) {  // a run's baseline: its colour, longer dashes, as heavy as a data line
      out += fmt::format(
          R"(<line class="reference baseline" data-series="{}" x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2" stroke-dasharray="8 5"><title>{}</title></line>)"
          "\n",
          xml_escape(r.legend), fmt_coord(L.plot_left), fmt_coord(y), fmt_coord(right), fmt_coord(y),
          palette_colour(*r.style), xml_escape(r.label));
    } else {
      out += fmt::format(
          R"(<line class="reference" x1="{}" y1="{}" x2="{}" y2="{}" stroke="#666666" stroke-width="1.2" stroke-dasharray="5 4"/>)"
          "\n",
          fmt_coord(L.plot_left), fmt_coord(y), fmt_coord(right), fmt_coord(y));
    }
    if (!r.label.empty()) {
      // A white halo keeps the label readable where a data line passes under it.
      out += fmt::format(R"(<text x="{}" y="{}" text-anchor="end" font-size="{}" fill="#555555" stroke="#ffffff" stroke-width="3" paint-order="stroke">{}</text>)" "\n",
                         fmt_coord(right - 4), fmt_coord(y > L.plot_top + 14 ? y - 4 : y + 12), fmt_coord(kTickPx),
                         xml_escape(r.label));
    }
  }

  // Series: one polyline per run of consecutive usable points.
  out += fmt::format(R"~(<g class="series-group" clip-path="url(#{}-clip)">)~" "\n", id);
  for (size_t si = 0; si < c.series.size(); ++si) {
    const auto& s = c.series[si];
    std::vector<Point> pts;
    for (const auto& p : s.points) {
      if (std::isfinite(p.x)) pts.push_back(p);
    }
    std::stable_sort(pts.begin(), pts.end(), [](const Point& a, const Point& b) { return a.x < b.x; });
    const size_t style = s.style.value_or(si);
    const auto colour = palette_colour(style);
    const bool markers = draws_markers(c, s);
    std::vector<std::vector<Point>> segments(1);
    for (const auto& p : pts) {
      if (usable(p, c.log_y)) {
        segments.back().push_back(p);
      } else if (!segments.back().empty()) {
        segments.emplace_back();
      }
    }
    for (const auto& seg : segments) {
      if (seg.size() < 2) continue;
      std::string points;
      for (const auto& p : seg) {
        if (!points.empty()) points += ' ';
        points += fmt_coord(L.map_x(p.x)) + "," + fmt_coord(L.map_y(p.y));
      }
      out += fmt::format(
          R"(<polyline class="{}" data-series="{}" points="{}" fill="none" stroke="{}" stroke-width="{}" stroke-linejoin="round" stroke-linecap="round"{}{}/>)"
          "\n",
          s.faint ? "series raw" : "series", xml_escape(s.name), points, colour, s.faint ? "1.2" : "2",
          s.faint ? R"( stroke-opacity="0.28")" : "", dash_for(style));
    }
    // Error bars: a vertical whisker with caps, in the series' colour, under the markers.
    for (const auto& seg : segments) {
      for (const auto& p : seg) {
        if (!p.has_error_bar() || (c.log_y && p.lo <= 0)) continue;
        const double x = L.map_x(p.x), y0 = L.map_y(p.lo), y1 = L.map_y(p.hi), cap = 4;
        out += fmt::format(
            R"(<g class="error-bar"><title>{}: x={}, {} .. {}</title><path d="M{},{}V{}M{},{}H{}M{},{}H{}" stroke="{}" stroke-width="1.5" fill="none"/></g>)"
            "\n",
            xml_escape(s.name), format_number(p.x, 6), format_number(p.lo, 6), format_number(p.hi, 6), fmt_coord(x),
            fmt_coord(y0), fmt_coord(y1), fmt_coord(x - cap), fmt_coord(y0), fmt_coord(x + cap), fmt_coord(x - cap),
            fmt_coord(y1), fmt_coord(x + cap), colour);
      }
    }
    // Markers on short series, and always on isolated points that no line would show.
    for (const auto& seg : segments) {
      if (!markers && seg.size() != 1) continue;
      for (const auto& p : seg) {
        out += fmt::format("<g class=\"marker\"><title>{}: x={}, y={}</title>{}</g>\n", xml_escape(s.name),
                           format_number(p.x, 6), format_number(p.y, 6),
                           marker(style, L.map_x(p.x), L.map_y(p.y), colour));
      }
    }
  }
  out += "</g>\n";

  if (!L.has_data) {
    out += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle" font-size="13" fill="#888888">no data</text>)" "\n",
                       fmt_coord(L.plot_left + L.plot_width / 2), fmt_coord(L.plot_top + L.plot_height / 2));
  }

  // Legend: a column right of the plot, names shortened with "…" (full name in the tooltip).
  if (has_legend(c)) {
    out += fmt::format(R"(<g class="legend" font-size="{}" fill="#222222">)" "\n", fmt_coord(kLegendPx));
    double y = L.plot_top + 8;
    for (size_t si = 0; si < c.series.size(); ++si) {
      const auto& s = c.series[si];
      if (!in_legend(s)) continue;
      const size_t style = s.style.value_or(si);
      const auto colour = palette_colour(style);
      const std::string shown = ellipsize(s.name, kLegendPx, legend_text_max(c));
      out += "<g class=\"legend-entry\">";
      if (shown != s.name) out += fmt::format("<title>{}</title>", xml_escape(s.name));
      out += fmt::format(R"(<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"{}/>)",
                         fmt_coord(L.legend_left), fmt_coord(y), fmt_coord(L.legend_left + kLegendSwatch),
                         fmt_coord(y), colour, dash_for(style));
      if (draws_markers(c, s)) out += marker(style, L.legend_left + kLegendSwatch / 2, y, colour);
      out += fmt::format(R"(<text x="{}" y="{}">{}</text>)", fmt_coord(L.legend_left + kLegendSwatch + kLegendGap),
                         fmt_coord(y + kLegendPx * 0.35), xml_escape(shown));
      out += "</g>\n";
      y += kLegendRow;
    }
    for (const auto& r : c.reference_lines) {
      if (r.legend.empty()) continue;
      const auto colour = r.style ? palette_colour(*r.style) : std::string_view("#666666");
      const std::string shown = ellipsize(r.legend, kLegendPx, legend_text_max(c));
      out += "<g class=\"legend-entry\">";
      if (shown != r.legend) out += fmt::format("<title>{}</title>", xml_escape(r.legend));
      out += fmt::format(R"(<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2" stroke-dasharray="8 5"/>)",
                         fmt_coord(L.legend_left), fmt_coord(y), fmt_coord(L.legend_left + kLegendSwatch),
                         fmt_coord(y), colour);
      out += fmt::format(R"(<text x="{}" y="{}">{}</text>)", fmt_coord(L.legend_left + kLegendSwatch + kLegendGap),
                         fmt_coord(y + kLegendPx * 0.35), xml_escape(shown));
      out += "</g>\n";
      y += kLegendRow;
    }
    out += "</g>\n";
  }

  // Title and axis labels.
  if (!c.title.empty()) {
    out += fmt::format(R"(<text class="title" x="{}" y="24" font-size="{}" font-weight="bold" fill="#111111">{}</text>)"
                       "\n",
                       fmt_coord(L.plot_left), fmt_coord(kTitlePx),
                       xml_escape(ellipsize(c.title, kTitlePx * 1.08, c.width - L.plot_left - 10)));
  }
  if (!c.x_label.empty()) {
    out += fmt::format(R"(<text class="x-label" x="{}" y="{}" text-anchor="middle" font-size="{}" fill="#333333">{}</text>)"
                       "\n",
                       fmt_coord(L.plot_left + L.plot_width / 2), fmt_coord(bottom + 38), fmt_coord(kLabelPx),
                       xml_escape(c.x_label));
  }
  if (!c.y_label.empty()) {
    const double cx = 16, cy = L.plot_top + L.plot_height / 2;
    out += fmt::format(
        R"~(<text class="y-label" x="{}" y="{}" transform="rotate(-90 {} {})" text-anchor="middle" font-size="{}" fill="#333333">{}</text>)~"
        "\n",
        fmt_coord(cx), fmt_coord(cy), fmt_coord(cx), fmt_coord(cy), fmt_coord(kLabelPx),
        xml_escape(ellipsize(c.y_label, kLabelPx, L.plot_height)));
  }
  out += "</svg>\n";
  return out;
}

}  // namespace qad::report
