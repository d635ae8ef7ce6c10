// Statistics over seeds: mean, sample standard deviation (n − 1), standard error and a Student-t confidence
// interval per group of cells, and paired differences (A − B matched by seed) with a plain-words verdict.
// Formulas and their reading: docs/experiments.md.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace qad::experiment {

struct Stats {
  size_t n = 0;
  double mean = 0;
  // Defined from two values on: sample standard deviation, standard error std/√n, and the interval
  // mean ± t(1 − α/2; n − 1) · stderr.
  std::optional<double> std_dev, std_err, ci_low, ci_high;
};

// The statistics of `xs` (n ≥ 1) with a `confidence` interval (0.95: 95 %).
Stats describe(const std::vector<double>& xs, double confidence = 0.95);

// P(T ≤ t) for Student's t with `df` > 0 degrees of freedom (the regularized incomplete beta function).
double student_t_cdf(double t, double df);

// The t with P(T ≤ t) = p, 0 < p < 1: t(0.975; 1) = 12.7062, t(0.975; 30) = 2.0423.
double student_t_quantile(double p, double df);

enum class Verdict {
  kGreater,      // the interval lies above 0: a > b beyond noise
  kLess,         // below 0: a < b beyond noise
  kWithinNoise,  // the interval contains 0
  kTooFew,       // fewer than two pairs: no interval
};

struct PairedDifference {
  std::vector<uint64_t> seeds;      // seeds present on both sides, ascending
  std::vector<double> differences;  // a − b per seed
  Stats stats;                      // of the differences
  Verdict verdict = Verdict::kTooFew;
};

// a − b per seed where both have a value (cells of one seed see the same data order and step randomness,
// so the pairing removes what the seed adds to both).
PairedDifference paired_difference(const std::map<uint64_t, double>& a, const std::map<uint64_t, double>& b,
                                   double confidence = 0.95);

// "cka-qad > qad beyond noise", "cka-qad < qad beyond noise", "within noise", "too few seeds".
std::string verdict_text(Verdict v, const std::string& a, const std::string& b);

}  // namespace qad::experiment
