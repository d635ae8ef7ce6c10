// Tick placement and labels (see ticks.h).
#include "report/ticks.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace qad::report {
namespace {

// mantissa * 10^exponent, computed so that negative exponents divide by an exact power of ten.
double scaled(double mantissa, int exponent) {
  return exponent >= 0 ? mantissa * std::pow(10.0, exponent) : mantissa / std::pow(10.0, -exponent);
}

std::string strip_zero_sign(std::string s) {
  if (s.find_first_not_of("-0.") == std::string::npos && s.front() == '-') s.erase(0, 1);
  return s;
}

}  // namespace

Ticks nice_ticks(double lo, double hi, int target) {
  QAD_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo <= hi && target >= 1,
            "nice_ticks: need finite lo <= hi and target >= 1, got [{}, {}] target {}", lo, hi, target);
  if (hi - lo <= 1e-12 * std::max(1.0, std::abs(lo))) {
    const double pad = lo == 0 ? 1.0 : std::abs(lo) * 0.05;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / target;
  int exponent = static_cast<int>(std::floor(std::log10(raw)));
  int mult = 0;
  for (int m : {1, 2, 5, 10}) {
    if (scaled(m, exponent) * (1 + 1e-9) >= raw) {
      mult = m;
      break;
    }
  }
  if (mult == 10) {
    mult = 1;
    ++exponent;
  }
  // Ticks are i * mult * 10^exponent for integers i: the domain snaps outward to whole steps.
  const double step = scaled(mult, exponent);
  const auto first = static_cast<long long>(std::floor(lo / step + 1e-9));
  const auto last = static_cast<long long>(std::ceil(hi / step - 1e-9));
  Ticks t;
  t.step = step;
  for (long long i = first; i <= last; ++i) t.values.push_back(scaled(static_cast<double>(i * mult), exponent));
  return t;
}

Ticks log_ticks(double lo, double hi) {
  QAD_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo > 0 && lo <= hi,
            "log_ticks: need finite 0 < lo <= hi, got [{}, {}]", lo, hi);
  int d0 = static_cast<int>(std::floor(std::log10(lo) + 1e-9));
  int d1 = static_cast<int>(std::ceil(std::log10(hi) - 1e-9));
  if (d1 == d0) ++d1;
  Ticks t;
  if (d1 - d0 <= 2) {
    // Few decades: 1-2-5 multiples, trimmed to the ones just enclosing [lo, hi].
    std::vector<double> all;
    for (int d = d0; d <= d1; ++d) {
      for (int m : {1, 2, 5}) all.push_back(scaled(m, d));
    }
    size_t a = 0, b = all.size() - 1;
    while (a + 1 < all.size() && all[a + 1] <= lo * (1 + 1e-12)) ++a;
    while (b > a + 1 && all[b - 1] >= hi * (1 - 1e-12)) --b;
    t.values.assign(all.begin() + static_cast<long>(a), all.begin() + static_cast<long>(b) + 1);
  } else {
    const int every = (d1 - d0 + 5) / 6;  // at most ~6 labelled decades
    d0 -= ((d0 % every) + every) % every;
    while ((d1 - d0) % every != 0) ++d1;
    for (int d = d0; d <= d1; d += every) t.values.push_back(scaled(1, d));
  }
  return t;
}

std::string format_tick(double value, double step, double largest_abs) {
  if (value == 0) return "0";
  if (std::abs(value) < 1e-4) {
    // "2e-06" -> "2e-6": the padded exponent only costs width.
    std::string s = fmt::format("{:.0e}", value);
    const size_t e = s.find("e-0");
    if (e != std::string::npos) s.erase(e + 2, 1);
    return s;
  }
  const double spacing = step > 0 ? step : std::abs(value);
  auto decimals_for = [](double s) { return std::max(0, -static_cast<int>(std::floor(std::log10(s) + 1e-9))); };
  if (largest_abs >= 1e4) {
    struct Unit { double scale; const char* suffix; };
    const Unit unit = largest_abs >= 1e9 ? Unit{1e9, "G"} : largest_abs >= 1e6 ? Unit{1e6, "M"} : Unit{1e3, "k"};
    const int d = std::min(3, decimals_for(spacing / unit.scale));
    return strip_zero_sign(fmt::format("{:.{}f}", value / unit.scale, d)) + unit.suffix;
  }
  return strip_zero_sign(fmt::format("{:.{}f}", value, std::min(8, decimals_for(spacing))));
}

std::string format_number(double value, int significant) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return "0";
  const double a = std::abs(value);
  if (a >= 1e7 || a < 1e-4) return fmt::format("{:.{}e}", value, std::max(0, significant - 1));
  const int int_digits = static_cast<int>(std::floor(std::log10(a))) + 1;
  std::string s = fmt::format("{:.{}f}", value, std::max(0, significant - int_digits));
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  return strip_zero_sign(s);
}

}  // namespace qad::report
