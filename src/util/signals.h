// Graceful stop on SIGINT / SIGTERM for long jobs (qad distill): the first signal only sets a flag that the
// training loop reads at its next step boundary (it then writes a checkpoint and says how to resume); a second
// signal stops the process at once, as the default action would.
#pragma once

namespace qad {

// Installs the handlers for as long as it lives and restores the previous ones after. Not nestable.
class GracefulStop {
 public:
  GracefulStop();
  ~GracefulStop();
  GracefulStop(const GracefulStop&) = delete;
  GracefulStop& operator=(const GracefulStop&) = delete;

  // The first signal received since construction (SIGINT or SIGTERM), or 0 when none came.
  static int requested();
  // The signal's name for messages ("SIGINT", "SIGTERM").
  static const char* name(int signo);
};

}  // namespace qad
