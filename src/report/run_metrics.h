// What the report reads off a run's records: a record's mean CKA, the last logged value of a metric, the
// last per-layer CKA, and the number formats the tables share.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "report/run_reader.h"

namespace qad::report {

// The logged "mean_cka", else the mean of the record's finite per-layer values.
std::optional<double> mean_cka(const MetricRecord& r);

// value_of(r, "mean_cka") is mean_cka(r); any other key is the logged field.
std::optional<double> value_of(const MetricRecord& r, std::string_view key);

std::optional<double> last_value(const std::vector<MetricRecord>& records, std::string_view key);

// The last record with per-layer CKA: validation first, training as a fallback. Null when none has any.
const MetricRecord* last_cka_record(const RunData& run);

// Table cells: 4 significant digits (or `significant`), "—" when absent.
std::string num(std::optional<double> v, int significant = 4);
// Counts: exact below 10^4, then k / M / G with 3 significant digits; "—" when absent.
std::string count(std::optional<double> v);

}  // namespace qad::report
