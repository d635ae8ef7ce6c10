// Kineto-based kernel table (see kernel_profile.h). The profiler API lives in torch/csrc, which LibTorch 1.13's
// Debian package ships in another shape: everything version-dependent stays behind the #if.
#include "kernel_profile.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>
#include <vector>

#include "util/torch_compat.h"

#if QAD_TORCH_AT_LEAST(2, 0) && !defined(QAD_BENCH_NO_KINETO)
#include <torch/csrc/autograd/profiler_kineto.h>
#endif

namespace qad::bench {

#if QAD_TORCH_AT_LEAST(2, 0) && !defined(QAD_BENCH_NO_KINETO)

bool kernel_profiler_available() { return true; }

std::string profile_kernels(const std::function<void()>& work, int top) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  using torch::profiler::impl::ProfilerConfig;
  using torch::profiler::impl::ProfilerState;
  const ProfilerConfig config(ProfilerState::KINETO);
  const std::set<ActivityType> activities = {ActivityType::CPU, ActivityType::CUDA};
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  try {
    work();
  } catch (...) {
    prof::disableProfiler();
    throw;
  }
  auto result = prof::disableProfiler();
  struct Row {
    int64_t calls = 0;
    double ns = 0;
  };
  std::map<std::string, Row> by_name;
  double total_ns = 0;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    auto& r = by_name[e.name()];
    r.calls += 1;
    r.ns += static_cast<double>(e.durationNs());
    total_ns += static_cast<double>(e.durationNs());
  }
  if (by_name.empty()) return "profile: no CUDA activity recorded (is CUPTI loadable? libcupti must be on the path)\n";
  std::vector<std::pair<std::string, Row>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  std::string out = fmt::format("GPU time {:.1f} ms in {} distinct kernels/copies; top {} by total time:\n",
                                total_ns / 1e6, rows.size(), std::min<size_t>(top, rows.size()));
  out += fmt::format("{:>6} {:>9} {:>6} {:>9}  {}\n", "calls", "total ms", "share", "mean us", "name");
  for (size_t i = 0; i < rows.size() && i < static_cast<size_t>(top); ++i) {
    const auto& [name, r] = rows[i];
    out += fmt::format("{:>6} {:>9.2f} {:>5.1f}% {:>9.1f}  {}\n", r.calls, r.ns / 1e6, 100.0 * r.ns / total_ns,
                       r.ns / 1e3 / static_cast<double>(r.calls), name.substr(0, 160));
  }
  return out;
}

#else

bool kernel_profiler_available() { return false; }

std::string profile_kernels(const std::function<void()>&, int) {
  throw std::runtime_error("--profile needs LibTorch >= 2.0 (the Kineto C++ API)");
}

#endif

}  // namespace qad::bench
