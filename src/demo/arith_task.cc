// Arithmetic examples with worked steps (see arith_task.h).
#include "demo/arith_task.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace qad::demo {
namespace {

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int64_t draw_operand(uint64_t& s, int max_digits) {
  const int digits = 1 + static_cast<int>(splitmix(s) % static_cast<uint64_t>(max_digits));
  const int64_t lo = digits == 1 ? 0 : static_cast<int64_t>(std::pow(10, digits - 1));
  const int64_t hi = static_cast<int64_t>(std::pow(10, digits)) - 1;
  return lo + static_cast<int64_t>(splitmix(s) % static_cast<uint64_t>(hi - lo + 1));
}

std::string pad(int64_t v, size_t width) {
  std::string s = std::to_string(v);
  return std::string(width > s.size() ? width - s.size() : 0, '0') + s;
}

}  // namespace

ArithExample make_example(uint64_t seed, int64_t index, const ArithOptions& o) {
  uint64_t s = seed * 0x100000001b3ull + static_cast<uint64_t>(index) * 0x9e3779b97f4a7c15ull;
  splitmix(s);
  int64_t a = draw_operand(s, o.max_digits), b = draw_operand(s, o.max_digits);
  const bool sub = static_cast<double>(splitmix(s) % 1000) < o.sub_fraction * 1000;
  const int phrasing = static_cast<int>(splitmix(s) % 3);
  if (sub && a < b) std::swap(a, b);
  const char* op = sub ? "-" : "+";
  ArithExample e;
  static const char* kAdd[] = {"What is {} + {}?", "Compute {} + {}.", "What is {} plus {}?"};
  static const char* kSub[] = {"What is {} - {}?", "Compute {} - {}.", "What is {} minus {}?"};
  e.question = fmt::format(fmt::runtime(sub ? kSub[phrasing] : kAdd[phrasing]), a, b);
  const size_t width = std::max(std::to_string(a).size(), std::to_string(b).size());
  const std::string pa = pad(a, width), pb = pad(b, width);
  std::string steps = fmt::format("<think>\n{}{}{}\n", pa, op, pb);
  std::string result;
  int carry = 0;
  for (size_t k = 0; k < width; ++k) {
    const int da = pa[width - 1 - k] - '0', db = pb[width - 1 - k] - '0';
    if (!sub) {
      const int sum = da + db + carry;
      result.insert(result.begin(), static_cast<char>('0' + sum % 10));
      steps += fmt::format("{}+{}+{}={} write {} carry {} result {}\n", da, db, carry, sum, sum % 10, sum / 10,
                           result);
      carry = sum / 10;
    } else {
      int d = da - db - carry;
      const int nb = d < 0 ? 1 : 0;
      steps += fmt::format("{}-{}-{}={} ", da, db, carry, d);
      if (nb) d += 10;
      result.insert(result.begin(), static_cast<char>('0' + d));
      steps += fmt::format("write {} borrow {} result {}\n", d, nb, result);
      carry = nb;
    }
  }
  if (!sub && carry) {
    result.insert(result.begin(), static_cast<char>('0' + carry));
    steps += fmt::format("carry {} result {}\n", carry, result);
  }
  if (result.size() > 1 && result[0] == '0') {
    const auto nz = result.find_first_not_of('0');
    result = nz == std::string::npos ? "0" : result.substr(nz);
    steps += fmt::format("drop leading zeros result {}\n", result);
  }
  e.answer = std::to_string(sub ? a - b : a + b);
  e.reasoning = steps + "</think>\n" + e.answer;
  return e;
}

std::string chat_prompt(const std::string& question) {
  return "<|im_start|>user\n" + question + "<|im_end|>\n<|im_start|>assistant\n";
}

}  // namespace qad::demo
