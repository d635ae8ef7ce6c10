// Per-kernel GPU time of a piece of work (one training step, in bench_train --profile), from the Kineto profiler
// that LibTorch >= 2 ships: every CUDA activity (kernel, memcpy, memset) grouped by name, top N by total time.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>

namespace qad::bench {

// True where this LibTorch has the Kineto C++ API (2.0 and later).
bool kernel_profiler_available();

// GPU time per kernel / copy name of one profiled piece of work.
struct KernelTotals {
  struct Entry {
    int64_t calls = 0;
    double ns = 0;
  };
  std::map<std::string, Entry> by_name;
  double total_ns = 0;
  int64_t steps = 1;  // how many steps the work ran (set by the caller): kernel_difference reports per step
};

// Runs `work` under the profiler and returns a table: total GPU time, then the top `top` kernels by total time
// (calls, total ms, share of GPU time, mean us, name); `totals` (optional) gets every kernel's figures. Throws
// where the profiler is not available.
std::string profile_kernels(const std::function<void()>& work, int top = 30, KernelTotals* totals = nullptr);

// Adds `one` (a profile of one more step) into `into`; `first` starts `into` afresh (steps = 1).
void add_totals(KernelTotals& into, const KernelTotals& one, bool first);

// What `other` runs beyond `base`, kernel by kernel: every kernel whose call count differs (work one variant
// adds or removes), with its time in both and the sum; and the summed difference of the kernels both run equally
// often (step-to-step variation, not attributable), with the largest of those. The attributable sum is the honest
// cost of a loss term. Figures are per step: totals over `steps` steps (both sides ran the same number) divided by it.
std::string kernel_difference(const KernelTotals& base, const KernelTotals& other);

}  // namespace qad::bench
