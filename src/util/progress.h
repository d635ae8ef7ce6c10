// A progress line for long work: fraction, rate, ETA and a caller's status text. On a terminal it
// redraws one line in place; in a log (not a TTY) it prints a line every few seconds instead.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace qad {

class Progress {
 public:
  // total <= 0 means unknown: no bar and no ETA, only the count and the rate.
  Progress(std::string label, int64_t total, std::string unit);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(int64_t n = 1, std::string_view status = {});
  void set(int64_t done, std::string_view status = {});
  void finish(std::string_view status = {});

  int64_t done() const { return done_; }
  double elapsed_seconds() const;

  // Formats seconds as H:MM:SS or M:SS.
  static std::string format_duration(double seconds);

 private:
  void draw(bool final);

  std::string label_, unit_, status_;
  int64_t total_ = 0, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool tty_ = false, finished_ = false, quiet_ = false;
};

}  // namespace qad
