// SVG heatmap with a colour bar, e.g. per-layer CKA (rows) over training steps (columns).
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace qad::report {

struct Heatmap {
  std::string title;
  std::string x_label;      // under the columns, e.g. "step"
  std::string y_label;      // beside the rows, e.g. "layer"
  std::string value_label;  // beside the colour bar, e.g. "CKA"
  std::vector<std::string> row_labels;     // drawn top to bottom
  std::vector<std::string> col_labels;     // left to right
  std::vector<std::vector<double>> values;  // [row][col]; NaN (or a short row) = missing, drawn grey
  std::optional<double> v_min, v_max;      // colour-scale range; default: the data's range
  double width = 720;
  std::string id;  // unique within a page (gradient ids); empty = derived from content
};

// Viridis colours from v_min (dark) to v_max (yellow); cells show their value as a tooltip and, when
// they are wide enough, as text. Throws qad::Error when values has more rows than row_labels or a row
// longer than col_labels.
std::string render_heatmap(const Heatmap& heatmap);

}  // namespace qad::report
