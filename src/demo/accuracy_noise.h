// How far apart two accuracies measured on the same n questions must be before the demo calls them different.
// Each accuracy is a binomial proportion; the difference counts as real only when it exceeds twice its standard
// error, sqrt(a (1 - a) / n + b (1 - b) / n) (questions treated as independent, the two runs too). That is the
// evaluation's noise alone: another training seed moves a student's accuracy further (docs/experiments.md).
#pragma once
#include <cstdint>
#include <string>

namespace qad::demo {

// Two standard errors of a - b, as a fraction (0.05 = 5 points).
double accuracy_noise(double a, double b, int64_t n);

// "78.5 % vs 75.0 %: within the test's noise (±8.4 points)" or "93.5 % vs 53.5 %: +40.0 points (the test's noise
// ±7.9)": the words say whose noise it is, so that a gap beyond it is not read as beyond a seed's.
std::string compare_accuracies(double a, double b, int64_t n);

}  // namespace qad::demo
