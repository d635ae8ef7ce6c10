// `qad cka` output: table, CSV, JSON and the per-layer plot (see cka_output.h).
#include "report/cka_output.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "report/run_reader.h"
#include "report/table.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::report {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr const char* kColumns[] = {"model", "layer", "biased", "debiased", "minibatch_biased", "minibatch_debiased"};

double pick(const LayerCka& l, CkaVariant v) {
  switch (v) {
    case CkaVariant::kBiased: return l.biased;
    case CkaVariant::kDebiased: return l.debiased;
    case CkaVariant::kMinibatchBiased: return l.minibatch_biased;
    case CkaVariant::kMinibatchDebiased: return l.minibatch_debiased;
  }
  return kNaN;
}

const char* variant_title(CkaVariant v) {
  switch (v) {
    case CkaVariant::kBiased: return "linear CKA";
    case CkaVariant::kDebiased: return "debiased linear CKA";
    case CkaVariant::kMinibatchBiased: return "minibatch linear CKA";
    case CkaVariant::kMinibatchDebiased: return "minibatch debiased linear CKA";
  }
  return "CKA";
}

// Mean over the finite values of each variant.
LayerCka mean_of(const ModelCkaResult& m) {
  LayerCka mean{"mean", 0, 0, 0, 0};
  for (auto v : {CkaVariant::kBiased, CkaVariant::kDebiased, CkaVariant::kMinibatchBiased,
                 CkaVariant::kMinibatchDebiased}) {
    double sum = 0;
    int n = 0;
    for (const auto& l : m.layers) {
      if (std::isfinite(pick(l, v))) sum += pick(l, v), ++n;
    }
    const double value = n ? sum / n : kNaN;
    switch (v) {
      case CkaVariant::kBiased: mean.biased = value; break;
      case CkaVariant::kDebiased: mean.debiased = value; break;
      case CkaVariant::kMinibatchBiased: mean.minibatch_biased = value; break;
      case CkaVariant::kMinibatchDebiased: mean.minibatch_debiased = value; break;
    }
  }
  return mean;
}

std::string exact(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format("{}", v);  // shortest representation that reads back to the same double
}

std::string fixed5(double v) { return std::isfinite(v) ? fmt::format("{:.5f}", v) : exact(v); }

nlohmann::ordered_json json_number(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
}

nlohmann::ordered_json layer_json(const LayerCka& l, bool with_name) {
  nlohmann::ordered_json j;
  if (with_name) j["layer"] = l.layer;
  j["biased"] = json_number(l.biased);
  j["debiased"] = json_number(l.debiased);
  j["minibatch_biased"] = json_number(l.minibatch_biased);
  j["minibatch_debiased"] = json_number(l.minibatch_debiased);
  return j;
}

double parse_double(const std::string& s, std::string_view source, size_t record, std::string_view column) {
  if (s == "nan") return kNaN;
  if (s == "inf") return std::numeric_limits<double>::infinity();
  if (s == "-inf") return -std::numeric_limits<double>::infinity();
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  QAD_CHECK(!s.empty() && end == s.c_str() + s.size(), "{}: record {}: column {} is \"{}\", not a number", source,
            record, column, s);
  return v;
}

}  // namespace

CkaFormat parse_cka_format(std::string_view name) {
  if (name == "table") return CkaFormat::kTable;
  if (name == "csv") return CkaFormat::kCsv;
  if (name == "json") return CkaFormat::kJson;
  fail("unknown CKA output format \"{}\": use table, csv or json", name);
}

std::string format_cka(const std::vector<ModelCkaResult>& results, CkaFormat format) {
  if (format == CkaFormat::kJson) {
    nlohmann::ordered_json models = nlohmann::ordered_json::array();
    for (const auto& m : results) {
      nlohmann::ordered_json jm;
      jm["model"] = m.model;
      jm["layers"] = nlohmann::ordered_json::array();
      for (const auto& l : m.layers) jm["layers"].push_back(layer_json(l, true));
      jm["mean"] = layer_json(mean_of(m), false);
      models.push_back(std::move(jm));
    }
    nlohmann::ordered_json root;
    root["models"] = std::move(models);
    return root.dump(2) + "\n";
  }
  Table t;
  if (format == CkaFormat::kCsv) {
    t.columns.assign(std::begin(kColumns), std::end(kColumns));
  } else {
    t.columns = {"model", "layer", "CKA", "CKA debiased", "minibatch CKA", "minibatch debiased"};
  }
  auto fmt_value = format == CkaFormat::kCsv ? exact : fixed5;
  for (const auto& m : results) {
    auto add = [&](const LayerCka& l) {
      t.rows.push_back({m.model, l.layer, fmt_value(l.biased), fmt_value(l.debiased), fmt_value(l.minibatch_biased),
                        fmt_value(l.minibatch_debiased)});
    };
    for (const auto& l : m.layers) add(l);
    if (format == CkaFormat::kTable) add(mean_of(m));
  }
  return format == CkaFormat::kCsv ? to_csv(t) : to_text(t);
}

std::vector<std::string> short_layer_labels(const std::vector<std::string>& names) {
  if (names.empty()) return {};
  // The longest prefix shared by all names that ends right before a trailing digit run.
  std::vector<std::string> out;
  std::string prefix;
  for (const auto& n : names) {
    size_t d = n.size();
    while (d > 0 && std::isdigit(static_cast<unsigned char>(n[d - 1]))) --d;
    if (d == n.size()) return names;  // some name does not end in a number
    if (&n == &names.front()) prefix = n.substr(0, d);
    if (n.substr(0, d) != prefix) return names;
    out.push_back(n.substr(d));
  }
  return out;
}

LineChart cka_chart(const std::vector<ModelCkaResult>& results, CkaVariant variant, std::string title) {
  // x positions follow the union of layer names in natural order, so models with different layer sets
  // (or a missing layer) still line up.
  std::vector<std::string> layers;
  for (const auto& m : results) {
    for (const auto& l : m.layers) {
      if (std::find(layers.begin(), layers.end(), l.layer) == layers.end()) layers.push_back(l.layer);
    }
  }
  std::stable_sort(layers.begin(), layers.end(), [](const auto& a, const auto& b) { return natural_less(a, b); });
  std::map<std::string, double> position;
  for (size_t i = 0; i < layers.size(); ++i) position[layers[i]] = static_cast<double>(i);

  LineChart c;
  c.title = title.empty() ? fmt::format("Per-layer {} against the teacher", variant_title(variant)) : std::move(title);
  const auto labels = short_layer_labels(layers);
  c.x_label = labels == layers ? "layer" : fmt::format("layer ({}N)", layers.front().substr(
                                                                          0, layers.front().size() - labels.front().size()));
  c.y_label = variant_title(variant);
  for (size_t i = 0; i < layers.size(); ++i) c.x_ticks.push_back({static_cast<double>(i), labels[i]});
  for (const auto& m : results) {
    Series s{m.model, {}};
    // A layer this model lacks is a gap in its line, not a jump to the next layer.
    std::vector<double> ys(layers.size(), kNaN);
    for (const auto& l : m.layers) ys[static_cast<size_t>(position[l.layer])] = pick(l, variant);
    for (size_t i = 0; i < ys.size(); ++i) s.points.push_back({static_cast<double>(i), ys[i]});
    c.series.push_back(std::move(s));
  }
  c.reference_lines.push_back({1.0, "teacher (CKA = 1)"});
  return c;
}

void write_cka_outputs(const std::vector<ModelCkaResult>& results, CkaFormat format,
                       const std::optional<std::filesystem::path>& plot_svg) {
  write_cka_outputs(results, format, plot_svg, std::cout);
}

void write_cka_outputs(const std::vector<ModelCkaResult>& results, CkaFormat format,
                       const std::optional<std::filesystem::path>& plot_svg, std::ostream& out,
                       CkaVariant plot_variant) {
  out << format_cka(results, format);
  out.flush();
  if (plot_svg) write_file_atomic(*plot_svg, render_line_chart(cka_chart(results, plot_variant)));
}

std::vector<ModelCkaResult> parse_cka_csv(std::string_view text, std::string_view source) {
  const Table t = parse_csv(text, source);
  QAD_CHECK(t.columns == std::vector<std::string>(std::begin(kColumns), std::end(kColumns)),
            "{}: the header is not model,layer,biased,debiased,minibatch_biased,minibatch_debiased", source);
  std::vector<ModelCkaResult> out;
  for (size_t r = 0; r < t.rows.size(); ++r) {
    const auto& row = t.rows[r];
    if (out.empty() || out.back().model != row[0]) out.push_back({row[0], {}});
    out.back().layers.push_back({row[1], parse_double(row[2], source, r + 2, kColumns[2]),
                                 parse_double(row[3], source, r + 2, kColumns[3]),
                                 parse_double(row[4], source, r + 2, kColumns[4]),
                                 parse_double(row[5], source, r + 2, kColumns[5])});
  }
  return out;
}

std::vector<ModelCkaResult> parse_cka_json(std::string_view text, std::string_view source) {
  const auto j = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  QAD_CHECK(!j.is_discarded() && j.is_object() && j.contains("models") && j["models"].is_array(),
            "{}: not CKA JSON (an object with a \"models\" array)", source);
  auto number = [&](const nlohmann::json& l, const char* key) {
    QAD_CHECK(l.contains(key) && (l[key].is_number() || l[key].is_null()), "{}: a layer has no numeric \"{}\"",
              source, key);
    return l[key].is_null() ? kNaN : l[key].get<double>();
  };
  std::vector<ModelCkaResult> out;
  for (const auto& m : j["models"]) {
    QAD_CHECK(m.is_object() && m.contains("model") && m["model"].is_string() && m.contains("layers") &&
                  m["layers"].is_array(),
              "{}: each entry of \"models\" needs \"model\" and \"layers\"", source);
    ModelCkaResult r{m["model"].get<std::string>(), {}};
    for (const auto& l : m["layers"]) {
      QAD_CHECK(l.is_object() && l.contains("layer") && l["layer"].is_string(), "{}: a layer of {} has no name",
                source, r.model);
      r.layers.push_back({l["layer"].get<std::string>(), number(l, "biased"), number(l, "debiased"),
                          number(l, "minibatch_biased"), number(l, "minibatch_debiased")});
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace qad::report
