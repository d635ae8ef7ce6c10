// The numbers of one finished cell, flattened to "metric name → value": what qad distill wrote to
// final_metrics.json (kl, ppl, ce, agreement, mean_cka, task_accuracy, cka.layers.N, steps, tokens,
// train_seconds) and what qad eval printed to eval.json (eval.kl, eval.perplexity, eval.accuracy, ...).
#pragma once
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "experiment/cell_state.h"

namespace qad::experiment {

using MetricValues = std::map<std::string, double>;

MetricValues metrics_from_final(const nlohmann::json& final_metrics);
MetricValues metrics_from_eval(const nlohmann::json& eval);  // names prefixed "eval."

// Both files of a cell, where present; a file that is not JSON is an error naming it.
MetricValues read_cell_metrics(const CellPaths& paths);

// +1 when higher is better (agreement, CKA, accuracy), -1 when lower is (kl, ppl, ce, nll), 0 otherwise.
int metric_direction(const std::string& metric);

// Reading order: the headline metrics first, then per-group accuracies, per-layer CKA (layers.2 before
// layers.10), then cost (train_seconds, steps, tokens).
std::vector<std::string> order_metrics(std::vector<std::string> names);

// The metrics a table shows by default (present ones only, in this order).
const std::vector<std::string>& headline_metrics();

}  // namespace qad::experiment
