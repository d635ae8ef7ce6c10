// Axis ticks: "nice" linear ticks with 1-2-5 steps, logarithmic ticks, and short tick labels.
#pragma once
#include <string>
#include <vector>

namespace qad::report {

struct Ticks {
  std::vector<double> values;  // ascending; the first and last are the axis domain
  double step = 0;             // linear: the tick spacing; log: 0
};

// Ticks at multiples of a step from {1, 2, 5} x 10^k, the smallest such step giving at most `target`
// intervals over [lo, hi]; the outer ticks enclose [lo, hi] (the domain snaps outward to them). Values are
// computed as integer / power of ten, so 0.92 is the double nearest 0.92, not 46 * 0.02. lo == hi is
// widened around the value. Requires finite lo <= hi and target >= 1.
Ticks nice_ticks(double lo, double hi, int target = 5);

// Logarithmic ticks for 0 < lo <= hi: powers of ten (every other or more when there are many decades);
// within two decades also the 2x and 5x multiples. The outer ticks enclose [lo, hi].
Ticks log_ticks(double lo, double hi);

// A tick label with as many decimals as the tick spacing `step` needs (step 0 = log axis: as many as the
// value needs); axes reaching 10^4 in k/M/G units ("20k", "1.5M"); values below 10^-4 in e-notation
// ("1e-5"). Never "-0".
std::string format_tick(double value, double step, double largest_abs);

// A value for tables and tooltips: up to `significant` significant digits, trailing zeros dropped;
// "nan", "inf", "-inf" for non-finite values.
std::string format_number(double value, int significant = 4);

}  // namespace qad::report
