#include "util/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace qad {
using Clock = std::chrono::steady_clock;

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), start_(Clock::now()),
      last_draw_(start_) {
  tty_ = ::isatty(STDERR_FILENO) != 0;
  quiet_ = std::getenv("QAD_QUIET") != nullptr;
}

Progress::~Progress() {
  if (!finished_ && done_ > 0) finish();
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

std::string Progress::format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  auto t = static_cast<long>(s + 0.5);
  if (t >= 3600) return fmt::format("{}:{:02}:{:02}", t / 3600, (t / 60) % 60, t % 60);
  return fmt::format("{}:{:02}", t / 60, t % 60);
}

void Progress::advance(int64_t n, std::string_view status) { set(done_ + n, status); }

void Progress::set(int64_t done, std::string_view status) {
  done_ = done;
  if (!status.empty()) status_ = std::string(status);
  auto now = Clock::now();
  auto since = std::chrono::duration<double>(now - last_draw_).count();
  if (since >= (tty_ ? 0.1 : 10.0)) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish(std::string_view status) {
  if (finished_) return;
  if (!status.empty()) status_ = std::string(status);
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final) {
  if (quiet_) return;
  double secs = elapsed_seconds();
  double rate = secs > 0 ? done_ / secs : 0.0;
  std::string line = label_;
  if (total_ > 0) {
    double frac = std::min(1.0, static_cast<double>(done_) / total_);
    int filled = static_cast<int>(frac * 24);
    line += fmt::format(" [{}{}] {:3.0f}% {}/{} {}", std::string(filled, '#'), std::string(24 - filled, '.'),
                        frac * 100, done_, total_, unit_);
  } else {
    line += fmt::format(" {} {}", done_, unit_);
  }
  line += fmt::format(" | {:.1f} {}/s", rate, unit_);
  if (final) {
    line += fmt::format(" | took {}", format_duration(secs));
  } else if (total_ > 0 && rate > 0) {
    line += fmt::format(" | ETA {}", format_duration((total_ - done_) / rate));
  }
  if (!status_.empty()) line += " | " + status_;
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace qad
