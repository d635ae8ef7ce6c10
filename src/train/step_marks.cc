// The step's mark sink (step_marks.h): a function behind an atomic flag, so that a step without a timeline pays one
// atomic load per point.
#include "train/step_marks.h"

#include <atomic>
#include <utility>

namespace qad::train {
namespace {

std::atomic<bool> g_on{false};
std::function<void(const char*)>& sink() {
  static std::function<void(const char*)> s;
  return s;
}

}  // namespace

void set_step_mark_sink(std::function<void(const char* point)> s) {
  g_on.store(false, std::memory_order_relaxed);
  sink() = std::move(s);
  g_on.store(static_cast<bool>(sink()), std::memory_order_release);
}

void step_mark(const char* point) {
  if (g_on.load(std::memory_order_acquire)) sink()(point);
}

}  // namespace qad::train
