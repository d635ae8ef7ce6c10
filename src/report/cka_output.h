// The rendering half of `qad cka`: per-layer CKA of each model against the teacher as a terminal table,
// CSV or JSON on a stream, and optionally an SVG plot with one line per model. The command that
// computes the numbers fills ModelCkaResult and calls write_cka_outputs.
#pragma once
#include <filesystem>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "report/svg_plot.h"

namespace qad::report {

struct LayerCka {
  std::string layer;  // e.g. "layers.3"
  double biased = 0;              // linear CKA over all tokens
  double debiased = 0;            // Nguyen et al. 2021 unbiased HSIC estimator; may be negative
  double minibatch_biased = 0;    // HSIC terms averaged over minibatches, then normalised
  double minibatch_debiased = 0;
};

struct ModelCkaResult {
  std::string model;  // a name for the student: "PTQ", a path, ...
  std::vector<LayerCka> layers;
};

enum class CkaFormat { kTable, kCsv, kJson };
enum class CkaVariant { kBiased, kDebiased, kMinibatchBiased, kMinibatchDebiased };

// "table", "csv", "json" -> CkaFormat; throws qad::Error listing the choices otherwise.
CkaFormat parse_cka_format(std::string_view name);

// Table: one row per (model, layer) plus a "mean" row per model, 5 decimals. CSV: the same rows without
// the means, shortest round-trip numbers, "nan" for NaN. JSON: {"models":[{"model", "layers":[...],
// "mean":{...}}]}, NaN as null.
std::string format_cka(const std::vector<ModelCkaResult>& results, CkaFormat format);

// The plot: x = layer position, one line per model, a dashed reference at CKA = 1.
LineChart cka_chart(const std::vector<ModelCkaResult>& results, CkaVariant variant = CkaVariant::kBiased,
                    std::string title = "");

// Writes format_cka(...) to `out` and, when plot_svg is set, the chart to that file (atomically).
void write_cka_outputs(const std::vector<ModelCkaResult>& results, CkaFormat format,
                       const std::optional<std::filesystem::path>& plot_svg);
void write_cka_outputs(const std::vector<ModelCkaResult>& results, CkaFormat format,
                       const std::optional<std::filesystem::path>& plot_svg, std::ostream& out,
                       CkaVariant plot_variant = CkaVariant::kBiased);

// Reads back what format_cka wrote (CSV or JSON); `source` names the input in errors.
std::vector<ModelCkaResult> parse_cka_csv(std::string_view text, std::string_view source = "<csv>");
std::vector<ModelCkaResult> parse_cka_json(std::string_view text, std::string_view source = "<json>");

// "layers.12" -> "12" when every name ends in digits after a shared prefix; else the names themselves.
// Used for compact x-axis labels.
std::vector<std::string> short_layer_labels(const std::vector<std::string>& names);

}  // namespace qad::report
