// Data pipeline throughput on ../shared/corpus/*_valid.jsonl.xz (3.0 MB of text): reading the lines alone
// (the baseline), prepare with 1 thread and with all threads, and loader batches against memcpy of the same
// bytes. The byte-level test encoder stands in for the tokenizer, so the figures show the pipeline's own
// cost, not tokenization. Usage: bench_data [SHARED_DIR] (default ../shared).
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "util/remove_tree.h"
#include "byte_encoder.h"
#include "data/line_reader.h"
#include "data/loader.h"
#include "data/prepare.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int main(int argc, char** argv) {
  const fs::path shared = argc > 1 ? fs::path(argv[1]) : fs::path("../shared");
  std::vector<fs::path> inputs;
  for (const char* n : {"prose_valid", "python_valid", "go_valid"}) inputs.push_back(shared / "corpus" / (std::string(n) + ".jsonl.xz"));
  const fs::path out = fs::temp_directory_path() / fmt::format("qad-bench-data-{}", ::getpid());
  qad::testing::ByteEncoder enc;

  auto t0 = Clock::now();
  uint64_t bytes = 0;
  for (const auto& in : inputs) {
    qad::data::LineReader r(in);
    std::string_view line;
    while (r.next(line)) bytes += line.size();
  }
  const double read_s = seconds_since(t0);
  fmt::print("{:<34} {:>8.3f} s {:>9.1f} MB/s   (baseline: xz -dc + line split)\n", "read lines", read_s,
             bytes / read_s / 1e6);

  const int all = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int threads : {0, 1, all}) {  // 0: an unreported warm-up run (first-touch and fsync costs)
    qad::data::PrepareOptions o;
    o.output = out / fmt::format("t{}", threads);
    o.on_bad_line_report = [](const qad::data::BadLine&) {};  // the corpus has one empty file
    o.progress = false;
    o.threads = std::max(threads, 1);
    t0 = Clock::now();
    auto s = qad::data::prepare_dataset(inputs, enc, o);
    const double sec = seconds_since(t0);
    if (threads == 0) continue;
    fmt::print("{:<34} {:>8.3f} s {:>9.1f} MB/s   {:.2f}x the read time, {:.1f} M tokens/s\n",
               fmt::format("prepare, {} thread(s)", threads), sec, bytes / sec / 1e6, sec / read_s,
               s.tokens / sec / 1e6);
  }

  for (auto mode : {qad::data::PackMode::pack, qad::data::PackMode::pad}) {
    qad::data::LoaderOptions lo;
    lo.seq_len = 1024;
    lo.batch_size = 16;
    lo.mode = mode;
    lo.split = qad::data::Split::all;
    qad::data::Loader loader(out / "t1", lo);
    const int64_t steps = loader.steps_per_epoch();
    t0 = Clock::now();
    uint64_t cells = 0;
    for (int64_t i = 0; i < steps; ++i) cells += loader.next().input_ids.size();
    const double sec = seconds_since(t0);
    // Baseline: copying the batch's bytes (4 arrays: 2 x int32, 2 x uint8) from one buffer to another.
    std::vector<char> a(static_cast<size_t>(lo.seq_len * lo.batch_size * 10)), b(a.size());
    t0 = Clock::now();
    for (int64_t i = 0; i < steps; ++i) {
      a[static_cast<size_t>(i) % a.size()] = static_cast<char>(i);
      std::memcpy(b.data(), a.data(), a.size());
    }
    const double copy_s = seconds_since(t0) + 1e-9;
    fmt::print("{:<34} {:>8.3f} s {:>9.1f} M tokens/s {:.1f}x a memcpy of the batch bytes ({} steps)\n",
               fmt::format("loader {}, T=1024 B=16", mode == qad::data::PackMode::pack ? "pack" : "pad"), sec,
               cells / sec / 1e6, sec / copy_s, steps);
  }
  ::qad::remove_tree(out);
  return 0;
}
