// One configuration style for every component: a struct lists its settings once, in a `fields(S&, f)` overload
// that calls f("key", member) per setting (the key is the member's name), and that list serves writing
// (to_json), reading over defaults (merge_json) and the unknown-key error alike, so they cannot disagree.
// Types: bool, integers, double, std::string, std::vector<std::string> (also "a,b" from the command line),
// std::vector<int64_t>, nlohmann::json (deep-merged), and any type with nlohmann to_json/from_json overloads
// (enums by name, lists of small structs). Header-only, torch-free.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "util/error.h"

namespace qad::config {

// Deep-merges `patch` into `base` (objects recursively, everything else replaced).
inline void merge_into(nlohmann::json& base, const nlohmann::json& patch) {
  if (base.is_object() && patch.is_object()) {
    for (const auto& [k, v] : patch.items()) {
      if (base.contains(k)) {
        merge_into(base[k], v);
      } else {
        base[k] = v;
      }
    }
  } else {
    base = patch;
  }
}

// A struct with a settings list (found by argument-dependent lookup: declare `fields` in the struct's namespace).
template <typename T>
concept HasFields = requires(T& t) { fields(t, [](const char*, auto&) {}); };

template <typename S> void merge_json(S& s, const nlohmann::json& j, const std::string& where);

// Every setting of `s` as a JSON object (nested settings structs as nested objects).
template <typename S> nlohmann::json to_json(const S& s) {
  nlohmann::json j = nlohmann::json::object();
  fields(const_cast<S&>(s), [&](const char* k, auto& v) {
    if constexpr (HasFields<std::decay_t<decltype(v)>>) {
      j[k] = config::to_json(v);
    } else {
      j[k] = v;
    }
  });
  return j;
}

namespace detail {
template <typename T> void read_value(T& v, const nlohmann::json& x) {
  if constexpr (std::is_same_v<T, nlohmann::json>) {
    merge_into(v, x);
  } else if constexpr (std::is_same_v<T, bool>) {
    QAD_CHECK(x.is_boolean(), "not true/false");
    v = x.get<bool>();
  } else if constexpr (std::is_same_v<T, double>) {
    QAD_CHECK(x.is_number(), "not a number");
    v = x.get<double>();
  } else if constexpr (std::is_integral_v<T>) {
    QAD_CHECK(x.is_number_integer() || (x.is_number_float() && std::floor(x.get<double>()) == x.get<double>()),
              "not an integer");
    const double d = x.get<double>();
    QAD_CHECK(std::is_signed_v<T> || d >= 0, "must be >= 0");
    // Beyond the type's range the conversion is undefined; 2^63 itself is not representable.
    QAD_CHECK(std::isfinite(d) && d >= static_cast<double>(std::numeric_limits<T>::min()) &&
                  d < static_cast<double>(std::numeric_limits<T>::max()),
              "out of range");
    v = x.is_number_integer() ? x.get<T>() : static_cast<T>(d);
  } else if constexpr (std::is_same_v<T, std::string>) {
    v = x.is_string() ? x.get<std::string>() : x.dump();
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    v.clear();
    if (x.is_string()) {  // "layers.0,layers.3" from the command line
      const std::string s = x.get<std::string>();
      for (size_t b = 0; b < s.size();) {
        size_t e = s.find(',', b);
        if (e == std::string::npos) e = s.size();
        if (e > b) v.push_back(s.substr(b, e - b));
        b = e + 1;
      }
    } else {
      QAD_CHECK(x.is_array() || x.is_null(), "not a list");
      if (x.is_array()) {
        for (const auto& item : x) v.push_back(item.is_string() ? item.get<std::string>() : item.dump());
      }
    }
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
    v.clear();
    if (x.is_number_integer()) {
      v.push_back(x.get<int64_t>());
    } else {
      for (const auto& item : x) v.push_back(item.get<int64_t>());
    }
  } else {
    v = x.get<T>();  // the type's own from_json (enums by name, small structs)
  }
}
}  // namespace detail

// Reads a (partial) object over the current values of `s`; a bad value or an unknown key throws qad::Error
// naming `where`, the key and (for unknown keys) the known ones.
template <typename S> void merge_json(S& s, const nlohmann::json& j, const std::string& where) {
  QAD_CHECK(j.is_object(), "{}: expected a mapping of settings, got {}", where, j.dump());
  std::set<std::string> known;
  fields(s, [&](const char* k, auto& v) {
    known.insert(k);
    auto it = j.find(k);
    if (it == j.end()) return;
    using T = std::decay_t<decltype(v)>;
    if constexpr (HasFields<T>) {
      merge_json(v, *it, where + "." + k);  // over the current values, like the enclosing section
    } else {
      try {
        detail::read_value(v, *it);
      } catch (const std::exception& e) {
        fail("{}.{}: bad value {} ({})", where, k, it->dump(), e.what());
      }
    }
  });
  for (const auto& [k, v] : j.items()) {
    if (!known.count(k)) {
      std::string list;
      for (const auto& n : known) list += (list.empty() ? "" : ", ") + n;
      fail("{}: unknown setting '{}' (known: {})", where, k, list);
    }
  }
}

}  // namespace qad::config
