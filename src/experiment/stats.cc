// Statistics over seeds (see stats.h). The t quantile is computed, not tabled: the CDF through the regularized
// incomplete beta function (continued fraction, Numerical Recipes §6.4), inverted by bisection.
#include "experiment/stats.h"

#include <cmath>

#include "util/error.h"

namespace qad::experiment {
namespace {

// Continued fraction of the incomplete beta function (modified Lentz).
double beta_continued_fraction(double a, double b, double x) {
  constexpr double kTiny = 1e-300, kEps = 1e-16;
  double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
  if (std::fabs(d) < kTiny) d = kTiny;
  d = 1.0 / d;
  double h = d;
  for (int m = 1; m <= 10000; ++m) {
    const double m2 = 2.0 * m;
    double aa = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
    d = 1.0 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1.0 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    h *= d * c;
    aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
    d = 1.0 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1.0 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1.0) < kEps) break;
  }
  return h;
}

// I_x(a, b).
double regularized_beta(double a, double b, double x) {
  if (x <= 0.0) return 0.0;
  if (x >= 1.0) return 1.0;
  const double front =
      std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x));
  if (x < (a + 1.0) / (a + b + 2.0)) return front * beta_continued_fraction(a, b, x) / a;
  return 1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b;
}

}  // namespace

double student_t_cdf(double t, double df) {
  QAD_CHECK(df > 0, "Student t: {} degrees of freedom; need more than 0", df);
  const double tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t));  // P(T > |t|)
  return t >= 0 ? 1.0 - tail : tail;
}

double student_t_quantile(double p, double df) {
  QAD_CHECK(p > 0 && p < 1, "Student t quantile: p = {} must lie strictly between 0 and 1", p);
  if (p == 0.5) return 0.0;
  if (p < 0.5) return -student_t_quantile(1.0 - p, df);
  double lo = 0.0, hi = 1.0;
  while (student_t_cdf(hi, df) < p) hi *= 2.0;  // df = 1, p = 0.9995: 636.6
  for (int i = 0; i < 200 && hi - lo > 1e-13 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_cdf(mid, df) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

Stats describe(const std::vector<double>& xs, double confidence) {
  QAD_CHECK(!xs.empty(), "statistics of no values");
  Stats s;
  s.n = xs.size();
  double sum = 0;
  for (double x : xs) sum += x;
  s.mean = sum / static_cast<double>(s.n);
  if (s.n < 2) return s;
  double ss = 0;  // two-pass: the squares of deviations, not E[x²] − E[x]², which cancels for close values
  for (double x : xs) ss += (x - s.mean) * (x - s.mean);
  s.std_dev = std::sqrt(ss / static_cast<double>(s.n - 1));
  s.std_err = *s.std_dev / std::sqrt(static_cast<double>(s.n));
  const double t = student_t_quantile(0.5 + confidence / 2.0, static_cast<double>(s.n - 1));
  s.ci_low = s.mean - t * *s.std_err;
  s.ci_high = s.mean + t * *s.std_err;
  return s;
}

PairedDifference paired_difference(const std::map<uint64_t, double>& a, const std::map<uint64_t, double>& b,
                                   double confidence) {
  PairedDifference d;
  for (const auto& [seed, va] : a) {
    const auto it = b.find(seed);
    if (it == b.end()) continue;
    d.seeds.push_back(seed);
    d.differences.push_back(va - it->second);
  }
  if (d.differences.empty()) return d;
  d.stats = describe(d.differences, confidence);
  if (!d.stats.ci_low) {
    d.verdict = Verdict::kTooFew;
  } else if (*d.stats.ci_low > 0) {
    d.verdict = Verdict::kGreater;
  } else if (*d.stats.ci_high < 0) {
    d.verdict = Verdict::kLess;
  } else {
    d.verdict = Verdict::kWithinNoise;
  }
  return d;
}

std::string verdict_text(Verdict v, const std::string& a, const std::string& b) {
  switch (v) {
    case Verdict::kGreater: return a + " > " + b + " beyond noise";
    case Verdict::kLess: return a + " < " + b + " beyond noise";
    case Verdict::kWithinNoise: return "within noise";
    case Verdict::kTooFew: return "too few seeds";
  }
  return "?";
}

}  // namespace qad::experiment
