// Metric look-ups shared by the report's tables and charts (see run_metrics.h).
#include "report/run_metrics.h"

#include <cmath>
#include <utility>

#include "report/ticks.h"

namespace qad::report {

std::optional<double> mean_cka(const MetricRecord& r) {
  if (auto v = r.get("mean_cka")) return v;
  double sum = 0;
  int n = 0;
  for (const auto& l : r.cka) {
    if (std::isfinite(l.value)) sum += l.value, ++n;
  }
  if (n == 0) return std::nullopt;
  return sum / n;
}

std::optional<double> value_of(const MetricRecord& r, std::string_view key) {
  return key == "mean_cka" ? mean_cka(r) : r.get(key);
}

std::optional<double> last_value(const std::vector<MetricRecord>& records, std::string_view key) {
  for (auto it = records.rbegin(); it != records.rend(); ++it) {
    if (auto v = value_of(*it, key)) return v;
  }
  return std::nullopt;
}

const MetricRecord* last_cka_record(const RunData& run) {
  for (const auto* records : {&run.valid, &run.train}) {
    for (auto it = records->rbegin(); it != records->rend(); ++it) {
      if (!it->cka.empty()) return &*it;
    }
  }
  return nullptr;
}

std::string num(std::optional<double> v, int significant) { return v ? format_number(*v, significant) : "—"; }

std::string count(std::optional<double> v) {
  if (!v) return "—";
  const double a = std::abs(*v);
  if (a < 1e4) return format_number(*v, 6);
  const auto [scale, unit] = a >= 1e9 ? std::pair{1e9, "G"} : a >= 1e6 ? std::pair{1e6, "M"} : std::pair{1e3, "k"};
  return format_number(*v / scale, 3) + unit;
}

}  // namespace qad::report
