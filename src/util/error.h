// qad::Error: the one exception type for user-facing failures. Messages say what went wrong, where
// (file, tensor, line) and what to do; the CLI prints them as one line and exits non-zero.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace qad {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace qad

// QAD_CHECK(cond, "format {}", args...): throws qad::Error with the formatted message when cond is false.
#define QAD_CHECK(cond, ...)      \
  do {                            \
    if (!(cond)) {                \
      ::qad::fail(__VA_ARGS__);   \
    }                             \
  } while (0)
