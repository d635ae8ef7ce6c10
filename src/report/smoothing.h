// Exponential moving average for noisy per-step training curves (`qad report --smooth W`).
#pragma once
#include <vector>

#include "report/svg_plot.h"

namespace qad::report {

// s_n = W s_{n-1} + (1 - W) x_n over the finite points in order, divided by 1 - W^n (n = finite points so far)
// so that the first points are not pulled towards 0 (TensorBoard's debiased EMA). Points are weighted per
// logged record, not per step. Non-finite points stay non-finite (the line breaks there) and do not enter the
// average. W = 0 returns the points unchanged. Throws qad::Error unless 0 <= W < 1.
std::vector<Point> ema_smooth(const std::vector<Point>& points, double weight);

}  // namespace qad::report
