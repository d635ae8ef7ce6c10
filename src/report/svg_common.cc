// SVG helpers: escaping, number formatting, text metrics and colour scales (see svg_common.h).
#include "report/svg_common.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

namespace qad::report {

std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default:
        // XML 1.0 allows only tab, newline and carriage return below 0x20.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') break;
        out += c;
    }
  }
  return out;
}

std::string fmt_coord(double v) {
  if (!std::isfinite(v)) return "0";
  std::string s = fmt::format("{:.2f}", v);
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  if (s == "-0") s = "0";
  return s;
}

namespace {

// Arial advance widths in 1/1000 em for printable ASCII 0x20..0x7e.
constexpr std::array<uint16_t, 95> kArialWidths = {
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,  // space../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,  // 0..?
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,  // @..O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,  // P.._
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,  // `..o
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584};      // p..~

}  // namespace

double text_width(std::string_view text, double font_px, bool bold) {
  double units = 0;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f) {
      units += kArialWidths[c - 0x20];
    } else if ((c & 0xC0) != 0x80) {  // a non-ASCII code point: count its lead byte only
      units += 1000;
    }
  }
  return units / 1000.0 * font_px * (bold ? 1.08 : 1.0);
}

std::string ellipsize(std::string_view text, double font_px, double max_px) {
  if (text_width(text, font_px) <= max_px) return std::string(text);
  const double ellipsis = text_width("…", font_px);
  std::string out;
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0xF0) len = 4; else if (c >= 0xE0) len = 3; else if (c >= 0xC0) len = 2;
    std::string next = out + std::string(text.substr(i, len));
    if (text_width(next, font_px) + ellipsis > max_px) break;
    out = std::move(next);
    i += len;
  }
  return out + "…";
}

std::string_view palette_colour(size_t index) {
  // Okabe & Ito (2008): blue, vermillion, bluish green, reddish purple, orange, sky blue, black, yellow.
  static constexpr std::array<std::string_view, 8> kColours = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                                               "#E69F00", "#56B4E9", "#000000", "#F0E442"};
  return kColours[index % kColours.size()];
}

std::string viridis(double t) {
  // matplotlib's viridis sampled at 0, 0.1, ..., 1; linear interpolation between samples.
  static constexpr std::array<uint32_t, 11> kStops = {0x440154, 0x482475, 0x414487, 0x355f8d, 0x2a788e, 0x21918c,
                                                      0x22a884, 0x44bf70, 0x7ad151, 0xbddf26, 0xfde725};
  if (!std::isfinite(t)) t = 0;
  t = std::clamp(t, 0.0, 1.0) * 10.0;
  const int i = std::min(9, static_cast<int>(std::floor(t)));
  const double f = t - i;
  auto channel = [&](int shift) {
    const double a = (kStops[i] >> shift) & 0xff, b = (kStops[i + 1] >> shift) & 0xff;
    return static_cast<int>(std::lround(a + (b - a) * f));
  };
  return fmt::format("#{:02x}{:02x}{:02x}", channel(16), channel(8), channel(0));
}

double luminance(std::string_view hex) {
  if (hex.size() != 7 || hex[0] != '#') return 0;
  auto component = [&](size_t pos) {
    const double c = std::stoi(std::string(hex.substr(pos, 2)), nullptr, 16) / 255.0;
    return c <= 0.03928 ? c / 12.92 : std::pow((c + 0.055) / 1.055, 2.4);
  };
  return 0.2126 * component(1) + 0.7152 * component(3) + 0.0722 * component(5);
}

std::string stable_id(std::string_view text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return fmt::format("{:012x}", h & 0xffffffffffffull);
}

}  // namespace qad::report
