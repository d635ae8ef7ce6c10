// The grid runner (see runner.h): a loop that starts cells in free slots, reaps children, forwards signals,
// and writes each cell's status when a child ends. A cell is a pipeline of at most two children: qad distill
// (fresh or --resume), then qad eval when the grid evaluates.
#include "experiment/runner.h"

#include <fmt/format.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <deque>
#include <map>
#include <optional>
#include <thread>

#include "experiment/cell_state.h"
#include "experiment/child_process.h"
#include "experiment/out_dir_lock.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/shell_quote.h"
#include "util/progress.h"
#include "util/remove_tree.h"

namespace qad::experiment {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kLogTailLines = 20;

std::atomic<int> g_signals_received{0};
std::atomic<int> g_last_signal{0};
void remember_signal(int sig) {
  g_last_signal.store(sig);
  g_signals_received.fetch_add(1);
}

// Installs the handlers for the runner's lifetime: the runner never dies of SIGINT / SIGTERM itself; it
// forwards each one to the running cells once and waits for them.
class SignalForwarding {
 public:
  SignalForwarding() {
    g_signals_received.store(0);
    g_last_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = remember_signal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalForwarding() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

std::string now_text() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  return buf;
}

std::string command_line(const std::string& exe, const std::vector<std::string>& args) {
  std::string s = shell_quote(exe);
  for (const auto& a : args) s.append(" ").append(shell_quote(a));  // not " " + x: a GCC 12 -Wrestrict false positive
  return s;
}

void append_to_log(const fs::path& log, const std::string& text) {
  std::FILE* f = std::fopen(log.c_str(), "ab");
  QAD_CHECK(f, "{}: cannot open the cell's log for appending", log.string());
  std::fputs(text.c_str(), f);
  std::fclose(f);
}

enum class Phase { kDistill, kEval };
const char* phase_name(Phase p) { return p == Phase::kDistill ? "distill" : "eval"; }

struct Job {
  size_t cell = 0;
  Phase phase = Phase::kDistill;
  pid_t pid = -1;
  Clock::time_point cell_start;
  fs::path eval_stdout;  // captured `qad eval --json` output
};

struct Slot {
  std::string gpu;  // "" when the runner does not assign GPUs
  std::optional<Job> job;
};

// The JSON object `qad eval --json` printed: the whole output, else its last line that is an object.
std::optional<nlohmann::json> parse_eval_output(const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return std::nullopt;
  const std::string text = read_file(file);
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_discarded() && j.is_object()) return j;
  const auto lines = last_lines(file, 1000);
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    auto lj = nlohmann::json::parse(*it, nullptr, false);
    if (!lj.is_discarded() && lj.is_object()) return lj;
  }
  return std::nullopt;
}

class Runner {
 public:
  Runner(const Grid& grid, const RunnerOptions& o) : grid_(grid), o_(o) {
    result_.outcomes.assign(grid.cells.size(), CellOutcome::kNotRun);
    QAD_CHECK(o.cells_per_gpu >= 1 && o.cells_per_gpu <= 64, "cells per GPU must be 1 to 64, got {}", o.cells_per_gpu);
    for (int k = 0; k < o.cells_per_gpu; ++k) {
      if (o.gpus.empty()) slots_.emplace_back();
      for (const auto& g : o.gpus) slots_.push_back(Slot{g, std::nullopt});
    }
  }

  GridRunResult run() {
    size_t resume = 0, fresh = 0, eval_only = 0;
    for (size_t i = 0; i < grid_.cells.size(); ++i) {
      const auto paths = cell_paths(o_.out, grid_.cells[i].name);
      const CellProgress p = inspect_cell(paths, grid_.has_eval());
      if (p == CellProgress::kFinished) {
        result_.outcomes[i] = CellOutcome::kAlreadyFinished;
        warn_if_changed(i, paths);
        continue;
      }
      (p == CellProgress::kResume ? resume : p == CellProgress::kNeedsEval ? eval_only : fresh) += 1;
      pending_.push_back(i);
    }
    const size_t done_before = grid_.cells.size() - pending_.size();
    say("qad experiment: {}: {} cells ({} finished, {} to resume, {} to evaluate, {} to start){}; logs in "
        "{}/cells/NAME/log.txt",
        grid_.name, grid_.cells.size(), done_before, resume, eval_only, fresh,
        slots_.size() == 1 ? std::string() : fmt::format(", {} at a time", slots_.size()), o_.out.string());
    start_ = Clock::now();
    SignalForwarding forwarding;
    int forwarded = 0;
    for (;;) {
      const int received = g_signals_received.load();
      if (received > forwarded) {
        if (forwarded == 0) {
          result_.stop_signal = g_last_signal.load();
          say("qad experiment: {}: stopping the running cells (they checkpoint first); send it again to stop "
              "them at once",
              result_.stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
        }
        for (auto& s : slots_) {
          if (s.job) ::kill(s.job->pid, g_last_signal.load());
        }
        forwarded = received;
      }
      bool active = false;
      for (auto& s : slots_) {
        if (!s.job) continue;
        if (const auto status = poll_child(s.job->pid)) finish_phase(s, *status);
        active |= s.job.has_value();
      }
      if (result_.stop_signal == 0) {
        for (auto& s : slots_) {
          while (!s.job && !pending_.empty()) {
            const size_t cell = pending_.front();
            pending_.pop_front();
            start_cell(s, cell);
          }
          active |= s.job.has_value();
        }
      }
      if (!active && (pending_.empty() || result_.stop_signal != 0)) break;
      std::this_thread::sleep_for(std::chrono::duration<double>(o_.poll_seconds));
    }
    return result_;
  }

 private:
  template <typename... Args>
  void say(fmt::format_string<Args...> f, Args&&... args) {
    fmt::print(o_.messages, "{}\n", fmt::format(f, std::forward<Args>(args)...));
    std::fflush(o_.messages);
  }

  // A finished cell whose recorded command differs from the grid's now: the file changed after it ran.
  void warn_if_changed(size_t i, const CellPaths& paths) {
    const auto status = read_status(paths);
    if (!status || !status->contains("distill_args")) return;
    if ((*status)["distill_args"] != nlohmann::json(grid_.cells[i].distill_args)) {
      say("qad experiment: warning: {} finished with other settings than the grid file gives now; it is kept as "
          "it is (delete {} to run it again)",
          grid_.cells[i].name, paths.dir.string());
    }
  }

  nlohmann::json base_status(size_t cell, const char* state, Phase phase) const {
    const Cell& c = grid_.cells[cell];
    // cells_at_once: how many cells shared this cell's device; their times (train_seconds) include each other's
    // load, which the summary says.
    return {{"name", c.name},         {"state", state},
            {"phase", phase_name(phase)}, {"attempt", attempts_for(cell)},
            {"distill_args", c.distill_args}, {"time", now_text()},
            {"cells_at_once", o_.cells_per_gpu}};
  }

  int attempts_for(size_t cell) const {
    const auto it = attempts_.find(cell);
    return it == attempts_.end() ? 0 : it->second;
  }

  void start_cell(Slot& s, size_t cell) {
    const Cell& c = grid_.cells[cell];
    const auto paths = cell_paths(o_.out, c.name);
    fs::create_directories(paths.dir);
    const CellProgress p = inspect_cell(paths, grid_.has_eval());
    attempts_[cell] = (read_status(paths).value_or(nlohmann::json::object()).value("attempt", 0)) + 1;
    Job job;
    job.cell = cell;
    job.cell_start = Clock::now();
    if (p == CellProgress::kFinished) {  // finished meanwhile (cannot happen with the lock; be safe)
      result_.outcomes[cell] = CellOutcome::kAlreadyFinished;
      return;
    }
    if (p == CellProgress::kNeedsEval) {
      s.job = job;
      start_eval(s);
      return;
    }
    if (p == CellProgress::kFresh) {
      // A run that never reached a checkpoint: start it again from nothing (qad distill refuses a
      // half-claimed --out, and its data preparation may be half done).
      remove_tree(paths.run_dir);
    }
    const auto args = distill_command(grid_, c, o_.out, p == CellProgress::kResume, s.gpu);
    append_to_log(paths.log, fmt::format("=== qad experiment {}: {} (attempt {}, {}) ===\n{}\n", now_text(),
                                         p == CellProgress::kResume ? "resume" : "start", attempts_[cell],
                                         s.gpu.empty() ? "" : "GPU " + s.gpu, command_line(o_.qad_executable, args)));
    write_status(paths, base_status(cell, "running", Phase::kDistill));
    job.phase = Phase::kDistill;
    job.pid = spawn_child(child_spec(args, paths.log, paths.log, s.gpu));
    s.job = job;
    say("qad experiment: {} {}{}", p == CellProgress::kResume ? "resume" : "start", c.name,
        s.gpu.empty() ? "" : " on GPU " + s.gpu);
  }

  void start_eval(Slot& s) {
    Job& job = *s.job;
    const Cell& c = grid_.cells[job.cell];
    const auto paths = cell_paths(o_.out, c.name);
    const auto args = eval_command(grid_, c, o_.out, s.gpu);
    job.phase = Phase::kEval;
    job.eval_stdout = paths.dir / ".eval.stdout";
    append_to_log(paths.log, fmt::format("=== qad experiment {}: evaluate ===\n{}\n", now_text(),
                                         command_line(o_.qad_executable, args)));
    write_status(paths, base_status(job.cell, "running", Phase::kEval));
    auto spec = child_spec(args, job.eval_stdout, paths.log, s.gpu);
    spec.truncate_stdout = true;
    job.pid = spawn_child(spec);
  }

  ChildSpec child_spec(const std::vector<std::string>& args, const fs::path& out, const fs::path& err,
                       const std::string& gpu) const {
    ChildSpec spec;
    spec.executable = o_.qad_executable;
    spec.args = args;
    spec.stdout_path = out;
    spec.stderr_path = err;
    if (!gpu.empty()) spec.env.emplace_back("CUDA_VISIBLE_DEVICES", gpu);
    return spec;
  }

  void finish_phase(Slot& s, int wait_status) {
    Job& job = *s.job;
    const Cell& c = grid_.cells[job.cell];
    const auto paths = cell_paths(o_.out, c.name);
    const bool exited_ok = exit_code(wait_status) == 0;
    std::string problem;
    if (job.phase == Phase::kDistill) {
      std::error_code ec;
      if (exited_ok && !fs::is_regular_file(paths.run_dir / "final_metrics.json", ec)) {
        problem = "qad distill exited with status 0 but wrote no final_metrics.json";
      } else if (!exited_ok) {
        problem = "qad distill " + describe_exit(wait_status);
      } else if (grid_.has_eval()) {
        if (result_.stop_signal != 0) return end_cell(s, CellOutcome::kInterrupted, wait_status, "");
        return start_eval(s);
      }
    } else {
      if (!exited_ok) {
        problem = "qad eval " + describe_exit(wait_status);
      } else if (const auto j = parse_eval_output(job.eval_stdout)) {
        write_file_atomic(paths.eval_json, j->dump(2) + "\n");
        std::error_code ec;
        fs::remove(job.eval_stdout, ec);
      } else {
        problem = fmt::format("qad eval exited with status 0 but printed no JSON object (kept in {})",
                              job.eval_stdout.string());
      }
    }
    if (problem.empty()) return end_cell(s, CellOutcome::kFinished, wait_status, "");
    // After a forwarded signal the cells stop on their own (a checkpoint first): that is no failure.
    end_cell(s, result_.stop_signal != 0 ? CellOutcome::kInterrupted : CellOutcome::kFailed, wait_status, problem);
  }

  void end_cell(Slot& s, CellOutcome outcome, int wait_status, const std::string& problem) {
    const Job job = *s.job;
    s.job.reset();
    const Cell& c = grid_.cells[job.cell];
    const auto paths = cell_paths(o_.out, c.name);
    const double seconds = std::chrono::duration<double>(Clock::now() - job.cell_start).count();
    result_.outcomes[job.cell] = outcome;
    const char* state = outcome == CellOutcome::kFinished ? "finished"
                        : outcome == CellOutcome::kFailed ? "failed"
                                                          : "interrupted";
    auto status = base_status(job.cell, state, job.phase);
    status["seconds"] = seconds;
    status["exit_code"] = exit_code(wait_status);
    if (!problem.empty()) {
      status["exit"] = problem;
      status["log_tail"] = last_lines(paths.log, kLogTailLines);
    }
    write_status(paths, status);
    if (outcome == CellOutcome::kFinished) {
      seconds_run_ += seconds;
      ++cells_run_;
    }
    const size_t finished = result_.count(CellOutcome::kFinished) + result_.count(CellOutcome::kAlreadyFinished);
    const size_t failed = result_.count(CellOutcome::kFailed);
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    std::string eta = "?";
    if (cells_run_ > 0) {
      size_t running = 0;
      for (const auto& sl : slots_) running += sl.job.has_value();
      const double remaining = static_cast<double>(pending_.size() + running);
      eta = Progress::format_duration(seconds_run_ / cells_run_ * remaining / static_cast<double>(slots_.size()));
    }
    say("qad experiment: [{}/{} finished{}] {} {} after {}; elapsed {}, ETA {}", finished, grid_.cells.size(),
        failed ? fmt::format(", {} failed", failed) : std::string(), c.name, state, Progress::format_duration(seconds),
        Progress::format_duration(elapsed), result_.stop_signal ? "-" : eta);
    if (outcome == CellOutcome::kFailed) {
      const auto tail = last_lines(paths.log, 3);
      say("qad experiment:   {}; the log ends:", problem);
      for (const auto& line : tail) say("qad experiment:   | {}", line);
    }
  }

  const Grid& grid_;
  const RunnerOptions& o_;
  GridRunResult result_;
  std::vector<Slot> slots_;
  std::deque<size_t> pending_;
  std::map<size_t, int> attempts_;
  Clock::time_point start_;
  double seconds_run_ = 0;
  size_t cells_run_ = 0;
};

void write_grid_record(const Grid& grid, const RunnerOptions& o) {
  nlohmann::json cells = nlohmann::json::array();
  for (const auto& c : grid.cells) {
    nlohmann::json e = {{"name", c.name},
                        {"group", grid.group_of(c)},
                        {"method", grid.methods[c.method].name},
                        {"variant", grid.variants[c.variant].name},
                        {"seed", c.seed},
                        {"distill", distill_command(grid, c, o.out, false, "")}};
    if (grid.has_eval()) e["eval"] = eval_command(grid, c, o.out, "");
    cells.push_back(std::move(e));
  }
  const nlohmann::json j = {{"experiment", grid.name}, {"file", grid.file.string()},
                            {"qad", o.qad_executable}, {"cells", cells}};
  write_file_atomic(o.out / "grid.json", j.dump(2) + "\n");
  if (grid.file.empty()) return;
  // A copy of the grid file as it was when the cells ran; a changed file is said once, not silently used.
  const fs::path copy = o.out / "experiment.yaml";
  const std::string text = read_file(grid.file);
  std::error_code ec;
  if (fs::is_regular_file(copy, ec) && read_file(copy) != text) {
    fmt::print(o.messages, "qad experiment: note: {} differs from {} (the grid file of the last run); cells that "
               "finished keep their results\n", grid.file.string(), copy.string());
  }
  write_file_atomic(copy, text);
}

}  // namespace

size_t GridRunResult::count(CellOutcome o) const {
  size_t n = 0;
  for (auto x : outcomes) n += x == o;
  return n;
}


std::vector<std::string> distill_command(const Grid& grid, const Cell& cell, const fs::path& out, bool resume,
                                         const std::string& gpu) {
  std::vector<std::string> a = cell.distill_args;
  a.insert(a.end(), {"--out", cell_paths(out, cell.name).run_dir.string()});
  // A --set, not --device: in qad distill --set outranks the named flags, and `base:` may set run.device.
  if (!gpu.empty()) a.insert(a.end(), {"--set", "run.device=cuda"});
  if (resume) a.push_back("--resume");
  return a;
}

std::vector<std::string> eval_command(const Grid& grid, const Cell& cell, const fs::path& out,
                                      const std::string& gpu) {
  const fs::path run = cell_paths(out, cell.name).run_dir;
  fs::path model = run / "export" / "nvfp4";
  std::error_code ec;
  if (!fs::is_directory(model, ec) && fs::is_directory(run / "export" / "hf", ec)) model = run / "export" / "hf";
  if (!fs::is_directory(model, ec) && fs::is_regular_file(run / "final_metrics.json", ec)) model = run;
  std::vector<std::string> a = {"eval", "--model", model.string()};
  if (!grid.tasks.empty()) a.insert(a.end(), {"--tasks", grid.tasks});
  a.insert(a.end(), grid.eval_args.begin(), grid.eval_args.end());
  if (!gpu.empty()) a.insert(a.end(), {"--device", "cuda"});
  a.push_back("--json");
  return a;
}

GridRunResult run_grid(const Grid& grid, const RunnerOptions& options) {
  QAD_CHECK(!grid.cells.empty(), "{}: the grid has no cells", grid.file.string());
  fs::create_directories(options.out / "cells");
  OutDirLock lock(options.out);
  write_grid_record(grid, options);
  Runner runner(grid, options);
  return runner.run();
}

}  // namespace qad::experiment
