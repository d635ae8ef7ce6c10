// Kineto-based kernel table (see kernel_profile.h). The profiler API lives in torch/csrc, which LibTorch 1.13's
// Debian package ships in another shape: everything version-dependent stays behind the #if.
#include "kernel_profile.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "util/torch_compat.h"

#if QAD_TORCH_AT_LEAST(2, 0) && !defined(QAD_BENCH_NO_KINETO)
#include <torch/csrc/autograd/profiler_kineto.h>
#endif

namespace qad::bench {

#if QAD_TORCH_AT_LEAST(2, 0) && !defined(QAD_BENCH_NO_KINETO)

struct Interval {
  uint64_t start = 0, end = 0;
  std::string name;
};

std::string short_name(const std::string& n) { return n.substr(0, 70); }

// The `top` longest stretches where no kernel or copy ran, each with the activity before and after it and what
// the host was doing meanwhile (the profiled host ops overlapping the gap, longest overlap first; autograd nodes
// appear as "autograd::engine::evaluate_function: <Node>"): where launch and autograd overhead, or a
// synchronisation, leaves the GPU waiting.
std::string idle_gaps(std::vector<Interval> kernels, const std::vector<Interval>& host_ops, size_t top) {
  if (kernels.size() < 2) return "";
  std::sort(kernels.begin(), kernels.end(), [](const auto& a, const auto& b) { return a.start < b.start; });
  struct Gap {
    uint64_t start, end;
    size_t before, after;
  };
  std::vector<Gap> gaps;
  uint64_t reach = kernels[0].end;
  size_t reach_i = 0;
  for (size_t i = 1; i < kernels.size(); ++i) {
    if (kernels[i].start > reach) gaps.push_back({reach, kernels[i].start, reach_i, i});
    if (kernels[i].end > reach) {
      reach = kernels[i].end;
      reach_i = i;
    }
  }
  std::sort(gaps.begin(), gaps.end(), [](const Gap& a, const Gap& b) { return a.end - a.start > b.end - b.start; });
  double small_ns = 0;
  size_t small = 0;
  for (const auto& g : gaps) {
    if (g.end - g.start < 20000) {
      small_ns += static_cast<double>(g.end - g.start);
      ++small;
    }
  }
  std::string out = fmt::format("GPU idle gaps: {}; {} under 20 us hold {:.2f} ms; longest {}:\n", gaps.size(), small,
                                small_ns / 1e6, std::min(top, gaps.size()));
  for (size_t k = 0; k < gaps.size() && k < top; ++k) {
    const auto& g = gaps[k];
    std::map<std::string, uint64_t> overlap;
    for (const auto& h : host_ops) {
      const uint64_t a = std::max(h.start, g.start), b = std::min(h.end, g.end);
      if (b > a) overlap[h.name] = std::max(overlap[h.name], b - a);
    }
    std::vector<std::pair<std::string, uint64_t>> o(overlap.begin(), overlap.end());
    std::sort(o.begin(), o.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    out += fmt::format("  {:.3f} ms after {} | before {} | host:", static_cast<double>(g.end - g.start) / 1e6,
                       short_name(kernels[g.before].name), short_name(kernels[g.after].name));
    for (size_t j = 0; j < o.size() && j < 4; ++j) {
      out += fmt::format(" {} {:.3f};", short_name(o[j].first), static_cast<double>(o[j].second) / 1e6);
    }
    out += "\n";
  }
  return out;
}

bool kernel_profiler_available() { return true; }

std::string profile_kernels(const std::function<void()>& work, int top, KernelTotals* totals) {
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
  std::map<std::string, Row> by_name, runtime;  // GPU activities; CUDA runtime calls on the host
  std::vector<std::pair<uint64_t, uint64_t>> spans;  // GPU activity [start, end) in ns
  std::vector<Interval> kernels, host_ops;           // named, for the idle gaps below
  double total_ns = 0;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) {
      const auto n = e.name();
      if (n.rfind("cuda", 0) == 0 || n.rfind("cu", 0) == 0) {
        auto& r = runtime[n];
        r.calls += 1;
        r.ns += static_cast<double>(e.durationNs());
      } else {
        host_ops.push_back({e.startNs(), e.endNs(), n});
      }
      continue;
    }
    auto& r = by_name[e.name()];
    r.calls += 1;
    r.ns += static_cast<double>(e.durationNs());
    total_ns += static_cast<double>(e.durationNs());
    spans.emplace_back(e.startNs(), e.endNs());
    kernels.push_back({e.startNs(), e.endNs(), e.name()});
  }
  if (by_name.empty()) return "profile: no CUDA activity recorded (is CUPTI loadable? libcupti must be on the path)\n";
  if (totals != nullptr) {
    totals->by_name.clear();
    for (const auto& [n, r] : by_name) totals->by_name[n] = {r.calls, r.ns};
    totals->total_ns = total_ns;
  }
  std::vector<std::pair<std::string, Row>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  // Busy = the union of the activities' intervals; the rest of the span the GPU waited for the host (launches,
  // autograd, synchronisation).
  std::sort(spans.begin(), spans.end());
  double busy_ns = 0;
  uint64_t cur_start = spans.front().first, cur_end = spans.front().second, last_end = 0;
  for (const auto& [a, b] : spans) {
    last_end = std::max(last_end, b);
    if (a > cur_end) {
      busy_ns += static_cast<double>(cur_end - cur_start);
      cur_start = a;
      cur_end = b;
    } else {
      cur_end = std::max(cur_end, b);
    }
  }
  busy_ns += static_cast<double>(cur_end - cur_start);
  const double span_ns = static_cast<double>(last_end - spans.front().first);
  std::string out = fmt::format("GPU span {:.2f} ms, busy {:.2f} ms, idle {:.2f} ms ({:.1f} %); {} activities\n",
                                span_ns / 1e6, busy_ns / 1e6, (span_ns - busy_ns) / 1e6,
                                100.0 * (span_ns - busy_ns) / std::max(span_ns, 1.0), spans.size());
  std::vector<std::pair<std::string, Row>> calls(runtime.begin(), runtime.end());
  std::sort(calls.begin(), calls.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  out += "CUDA runtime calls on the host (top 8 by time):";
  for (size_t i = 0; i < calls.size() && i < 8; ++i) {
    out += fmt::format(" {} x{} {:.2f} ms;", calls[i].first, calls[i].second.calls, calls[i].second.ns / 1e6);
  }
  out += "\n";
  out += idle_gaps(kernels, host_ops, 8);
  out += fmt::format("GPU time {:.1f} ms in {} distinct kernels/copies; top {} by total time:\n",
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

std::string profile_kernels(const std::function<void()>&, int, KernelTotals*) {
  throw std::runtime_error("--profile needs LibTorch >= 2.0 (the Kineto C++ API)");
}

#endif

void add_totals(KernelTotals& into, const KernelTotals& one, bool first) {
  if (first) {
    into = one;
    into.steps = 1;
    return;
  }
  for (const auto& [n, e] : one.by_name) {
    auto& t = into.by_name[n];
    t.calls += e.calls;
    t.ns += e.ns;
  }
  into.total_ns += one.total_ns;
  ++into.steps;
}

std::string kernel_difference(const KernelTotals& base, const KernelTotals& other) {
  struct Diff {
    std::string name;
    KernelTotals::Entry a, b;
  };
  if (base.steps != other.steps) {
    return fmt::format("kernel_difference: the two profiles ran {} and {} steps; not compared\n", base.steps,
                       other.steps);
  }
  const double per = 1.0 / static_cast<double>(std::max<int64_t>(base.steps, 1));
  std::vector<Diff> changed, same;
  double same_delta_ns = 0;
  for (const auto& [n, b] : other.by_name) {
    auto it = base.by_name.find(n);
    const KernelTotals::Entry a = it == base.by_name.end() ? KernelTotals::Entry{} : it->second;
    if (a.calls == b.calls) {
      same_delta_ns += b.ns - a.ns;
      same.push_back({n, a, b});
    } else {
      changed.push_back({n, a, b});
    }
  }
  for (const auto& [n, a] : base.by_name) {
    if (!other.by_name.count(n)) changed.push_back({n, a, {}});
  }
  const auto by_size = [](const Diff& x, const Diff& y) { return std::abs(x.b.ns - x.a.ns) > std::abs(y.b.ns - y.a.ns); };
  std::sort(changed.begin(), changed.end(), by_size);
  std::sort(same.begin(), same.end(), by_size);
  double delta_ns = 0;
  for (const auto& d : changed) delta_ns += d.b.ns - d.a.ns;
  std::string out = fmt::format(
      "Kernels whose call count differs: {}, {:+.3f} ms GPU time per step ({:+.2f} % of the first variant's {:.2f} ms "
      "a step{}); kernels run equally often differ by {:+.3f} ms a step in all (step-to-step variation)\n",
      changed.size(), delta_ns * per / 1e6, 100.0 * delta_ns / std::max(base.total_ns, 1.0), base.total_ns * per / 1e6,
      base.steps > 1 ? fmt::format(", over {} profiled steps each", base.steps) : std::string(),
      same_delta_ns * per / 1e6);
  const auto rows = [&](const std::vector<Diff>& list, size_t limit) {
    std::string text = fmt::format("{:>7} {:>7} {:>9} {:>9} {:>9}  {}\n", "calls A", "calls B", "ms A", "ms B",
                                   "ms B-A", "name (calls and ms per step)");
    for (size_t i = 0; i < list.size() && i < limit; ++i) {
      const auto& d = list[i];
      text += fmt::format("{:>7g} {:>7g} {:>9.3f} {:>9.3f} {:>+9.3f}  {}\n", static_cast<double>(d.a.calls) * per,
                          static_cast<double>(d.b.calls) * per, d.a.ns * per / 1e6, d.b.ns * per / 1e6,
                          (d.b.ns - d.a.ns) * per / 1e6, d.name.substr(0, 140));
    }
    return text;
  };
  out += rows(changed, changed.size());
  // Where the equally-run kernels' difference sits: a systematic one (the same kernels slower beside the term's
  // work) shows here once several steps are profiled; one step's is mostly noise.
  out += "largest differences among the kernels run equally often:\n" + rows(same, 8);
  return out;
}

}  // namespace qad::bench
