// Building blocks shared by the SVG charts: XML escaping, compact coordinate formatting, a text-width
// estimate (so labels are laid out without a font engine), the colour-blind-safe palette and viridis.
#pragma once
#include <string>
#include <string_view>

namespace qad::report {

// Escapes &, <, >, " and ' for XML text and attribute values; drops control characters that XML 1.0
// forbids (a run name with a stray \x01 must not make the whole report unreadable).
std::string xml_escape(std::string_view text);

// A coordinate with at most two decimals and no trailing zeros ("190", "262.5", "-3.25"): short,
// deterministic and exact enough for screen pixels.
std::string fmt_coord(double v);

// Estimated width in pixels of `text` at `font_px` in Arial/Liberation Sans (the charts ask for that
// font family first), from the font's advance widths; unknown characters count as wide.
double text_width(std::string_view text, double font_px, bool bold = false);

// Shortens `text` with a trailing "…" so that text_width(result, font_px) <= max_px.
std::string ellipsize(std::string_view text, double font_px, double max_px);

// Okabe–Ito colours, ordered so that the first few are distinct in colour-blind vision and greyscale;
// index wraps around.
std::string_view palette_colour(size_t index);

// Viridis colour (perceptually uniform, colour-blind safe) at t in [0, 1], as "#rrggbb". t is clamped.
std::string viridis(double t);

// Relative luminance (0 = black, 1 = white) of a "#rrggbb" colour: picks black or white text on a cell.
double luminance(std::string_view hex_colour);

// Deterministic id fragment (FNV-1a of `text`, hex): unique ids for clip paths and gradients when many
// SVGs are inlined into one HTML page.
std::string stable_id(std::string_view text);

// The font stack of every chart: Arial metrics (Liberation Sans is metric-compatible on Linux).
inline constexpr std::string_view kFontFamily = "Liberation Sans, Arial, Helvetica, sans-serif";

}  // namespace qad::report
