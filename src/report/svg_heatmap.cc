// Heatmap rendering (see svg_heatmap.h).
#include "report/svg_heatmap.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "report/svg_common.h"
#include "report/ticks.h"
#include "util/error.h"

namespace qad::report {
namespace {

constexpr double kTitlePx = 15, kLabelPx = 12.5, kTickPx = 11, kCellTextPx = 10;
constexpr const char* kMissing = "#d9d9d9";

}  // namespace

std::string render_heatmap(const Heatmap& h) {
  const size_t rows = h.row_labels.size(), cols = h.col_labels.size();
  QAD_CHECK(h.values.size() <= rows, "heatmap '{}': {} rows of values but {} row labels", h.title, h.values.size(),
            rows);
  for (size_t r = 0; r < h.values.size(); ++r) {
    QAD_CHECK(h.values[r].size() <= cols, "heatmap '{}': row {} has {} values but there are {} column labels", h.title,
              r, h.values[r].size(), cols);
  }
  auto value = [&](size_t r, size_t c) {
    return r < h.values.size() && c < h.values[r].size() ? h.values[r][c] : std::numeric_limits<double>::quiet_NaN();
  };
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      if (std::isfinite(value(r, c))) lo = std::min(lo, value(r, c)), hi = std::max(hi, value(r, c));
    }
  }
  if (h.v_min) lo = *h.v_min;
  if (h.v_max) hi = *h.v_max;
  if (!(lo <= hi)) lo = 0, hi = 1;
  if (hi - lo < 1e-12) lo -= 0.5e-3, hi += 0.5e-3;

  // Layout: row labels | cells | colour bar. Cell height from the row count, width from the space left.
  double row_label_w = 0;
  for (const auto& l : h.row_labels) row_label_w = std::max(row_label_w, text_width(l, kTickPx));
  row_label_w = std::min(row_label_w, h.width * 0.25);
  const double top = h.title.empty() ? 12 : 38;
  const double left = (h.y_label.empty() ? 10 : 32) + row_label_w + 8;
  const double bar_w = 14, bar_gap = 18, bar_labels = 52 + (h.value_label.empty() ? 0 : 20);
  // Cells at most 90 px wide: a run with one validation step gets a narrow strip, not a banner.
  const double avail_w = std::max(40.0, h.width - left - bar_gap - bar_w - bar_labels);
  const double cell_w = cols ? std::min(avail_w / static_cast<double>(cols), 90.0) : avail_w;
  const double grid_w = cols ? cell_w * static_cast<double>(cols) : avail_w;
  const double title_w = h.title.empty() ? 0 : left + text_width(h.title, kTitlePx, true) + 12;
  const double width = std::min(h.width, std::max(left + grid_w + bar_gap + bar_w + bar_labels, title_w));
  const double cell_h = std::clamp(320.0 / std::max<size_t>(rows, 1), 9.0, 26.0);
  const double grid_h = cell_h * static_cast<double>(std::max<size_t>(rows, 1));
  const double bottom_y = top + grid_h;
  const double bar_h = std::max(grid_h, 60.0);  // the colour bar stays readable for one or two rows
  const double height = std::max(bottom_y + 26 + (h.x_label.empty() ? 0 : 22) + 8, top + bar_h + 26);
  const bool cell_text = cell_w >= 38 && cell_h >= 14;
  // Cell values with fixed decimals, enough to resolve 1/50 of the colour range (3 for CKA in 0.9..1).
  const int cell_decimals = std::clamp(-static_cast<int>(std::floor(std::log10((hi - lo) / 50))), 0, 4);
  auto t_of = [&](double v) { return (v - lo) / (hi - lo); };

  const std::string id = xml_escape(
      h.id.empty() ? "heatmap-" + stable_id(h.title + "|" + std::to_string(rows) + "x" + std::to_string(cols)) : h.id);
  std::string out;
  out += fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" class="qad-heatmap" id="{}" width="{}" height="{}" viewBox="0 0 {} {}" font-family="{}" role="img">)"
      "\n",
      id, fmt_coord(width), fmt_coord(height), fmt_coord(width), fmt_coord(height), kFontFamily);
  out += fmt::format("<title>{}</title>\n", xml_escape(h.title.empty() ? "heatmap" : h.title));
  out += fmt::format(R"(<rect width="{}" height="{}" fill="#ffffff"/>)" "\n", fmt_coord(width), fmt_coord(height));

  // Cells.
  out += "<g class=\"cells\">\n";
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const double v = value(r, c);
      const std::string colour = std::isfinite(v) ? viridis(t_of(v)) : kMissing;
      const double x = left + cell_w * static_cast<double>(c), y = top + cell_h * static_cast<double>(r);
      // Cells overlap by a fraction of a pixel so that anti-aliasing leaves no hairline gaps.
      out += fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} {}, {} {}: {}</title></rect>)",
                         fmt_coord(x), fmt_coord(y), fmt_coord(cell_w + 0.3), fmt_coord(cell_h + 0.3), colour,
                         xml_escape(h.y_label), xml_escape(h.row_labels[r]), xml_escape(h.x_label),
                         xml_escape(h.col_labels[c]), std::isfinite(v) ? format_number(v, 5) : "missing");
      if (cell_text && std::isfinite(v)) {
        out += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle" font-size="{}" fill="{}">{}</text>)",
                           fmt_coord(x + cell_w / 2), fmt_coord(y + cell_h / 2 + kCellTextPx * 0.35),
                           fmt_coord(kCellTextPx), luminance(colour) > 0.35 ? "#000000" : "#ffffff",
                           fmt::format("{:.{}f}", v, cell_decimals));
      }
      out += "\n";
    }
  }
  out += "</g>\n";

  // Row labels (all when they fit, else every k-th) and column labels (thinned to avoid overlap).
  out += fmt::format(R"(<g class="ticks" font-size="{}" fill="#444444">)" "\n", fmt_coord(kTickPx));
  const size_t row_every = std::max<size_t>(1, static_cast<size_t>(std::ceil(12.0 / cell_h)));
  for (size_t r = 0; r < rows; r += row_every) {
    out += fmt::format(R"(<text x="{}" y="{}" text-anchor="end">{}</text>)" "\n", fmt_coord(left - 6),
                       fmt_coord(top + cell_h * (static_cast<double>(r) + 0.5) + kTickPx * 0.35),
                       xml_escape(ellipsize(h.row_labels[r], kTickPx, row_label_w)));
  }
  double widest = 0;
  for (const auto& l : h.col_labels) widest = std::max(widest, text_width(l, kTickPx));
  const size_t col_every = std::max<size_t>(1, static_cast<size_t>(std::ceil((widest + 10) / std::max(cell_w, 1e-9))));
  for (size_t c = 0; c < cols; c += col_every) {
    out += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle">{}</text>)" "\n",
                       fmt_coord(left + cell_w * (static_cast<double>(c) + 0.5)), fmt_coord(bottom_y + 16),
                       xml_escape(h.col_labels[c]));
  }
  out += "</g>\n";

  // Colour bar with ticks.
  const double bar_x = left + grid_w + bar_gap;
  out += fmt::format(R"(<defs><linearGradient id="{}-scale" x1="0" y1="1" x2="0" y2="0">)", id);
  for (int i = 0; i <= 10; ++i) {
    out += fmt::format(R"(<stop offset="{}" stop-color="{}"/>)", fmt_coord(i / 10.0), viridis(i / 10.0));
  }
  out += "</linearGradient></defs>\n";
  out += fmt::format(R"~(<rect class="colour-bar" x="{}" y="{}" width="{}" height="{}" fill="url(#{}-scale)" stroke="#888888" stroke-width="0.5"/>)~"
                     "\n",
                     fmt_coord(bar_x), fmt_coord(top), fmt_coord(bar_w), fmt_coord(bar_h), id);
  const Ticks vt = nice_ticks(lo, hi, std::clamp(static_cast<int>(bar_h / 40), 2, 6));
  double largest = 0;
  for (double v : vt.values) largest = std::max(largest, std::abs(v));
  out += fmt::format(R"(<g class="scale-ticks" font-size="{}" fill="#444444">)" "\n", fmt_coord(kTickPx));
  for (double v : vt.values) {
    if (v < lo - 1e-12 || v > hi + 1e-12) continue;
    const double y = top + bar_h * (1 - t_of(v));
    out += fmt::format(R"(<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#444444"/>)", fmt_coord(bar_x + bar_w),
                       fmt_coord(y), fmt_coord(bar_x + bar_w + 4), fmt_coord(y));
    out += fmt::format(R"(<text x="{}" y="{}">{}</text>)" "\n", fmt_coord(bar_x + bar_w + 7),
                       fmt_coord(y + kTickPx * 0.35), format_tick(v, vt.step, largest));
  }
  out += "</g>\n";
  bool any_missing = false;
  for (size_t r = 0; r < rows && !any_missing; ++r) {
    for (size_t c = 0; c < cols && !any_missing; ++c) any_missing = !std::isfinite(value(r, c));
  }
  if (any_missing) {
    const double y = top + bar_h + 8;
    out += fmt::format(R"(<rect x="{}" y="{}" width="{}" height="10" fill="{}"/><text x="{}" y="{}" font-size="{}" fill="#444444">missing</text>)"
                       "\n",
                       fmt_coord(bar_x), fmt_coord(y), fmt_coord(bar_w), kMissing, fmt_coord(bar_x + bar_w + 5),
                       fmt_coord(y + 9), fmt_coord(kTickPx));
  }
  if (!h.value_label.empty()) {
    const double cx = bar_x + bar_w + 58, cy = top + bar_h / 2;
    out += fmt::format(
        R"~(<text x="{}" y="{}" transform="rotate(90 {} {})" text-anchor="middle" font-size="{}" fill="#333333">{}</text>)~"
        "\n",
        fmt_coord(cx), fmt_coord(cy), fmt_coord(cx), fmt_coord(cy), fmt_coord(kLabelPx), xml_escape(h.value_label));
  }

  if (!h.title.empty()) {
    out += fmt::format(R"(<text class="title" x="{}" y="24" font-size="{}" font-weight="bold" fill="#111111">{}</text>)"
                       "\n",
                       fmt_coord(left), fmt_coord(kTitlePx), xml_escape(ellipsize(h.title, kTitlePx * 1.08, width - left - 10)));
  }
  if (!h.x_label.empty()) {
    out += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle" font-size="{}" fill="#333333">{}</text>)" "\n",
                       fmt_coord(left + grid_w / 2), fmt_coord(bottom_y + 38), fmt_coord(kLabelPx),
                       xml_escape(h.x_label));
  }
  if (!h.y_label.empty()) {
    const double cx = 16, cy = top + grid_h / 2;
    out += fmt::format(
        R"~(<text x="{}" y="{}" transform="rotate(-90 {} {})" text-anchor="middle" font-size="{}" fill="#333333">{}</text>)~"
        "\n",
        fmt_coord(cx), fmt_coord(cy), fmt_coord(cx), fmt_coord(cy), fmt_coord(kLabelPx), xml_escape(h.y_label));
  }
  out += "</svg>\n";
  return out;
}

}  // namespace qad::report
