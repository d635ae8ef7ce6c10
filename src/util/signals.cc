// GracefulStop (see signals.h). The handler only touches a lock-free atomic and write(2), both
// async-signal-safe.
#include "util/signals.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace qad {
namespace {

std::atomic<int> g_first_signal{0};
struct sigaction g_old_int, g_old_term;

void on_signal(int signo) {
  int expected = 0;
  if (g_first_signal.compare_exchange_strong(expected, signo)) {
    static const char kMsg[] =
        "\nqad: stopping after the current step to write a checkpoint (send the signal again to stop at once)\n";
    ssize_t ignored = ::write(STDERR_FILENO, kMsg, sizeof(kMsg) - 1);
    (void)ignored;
    return;
  }
  // Second signal: stop now, with the default action (the exit status then says which signal it was).
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(signo, &dfl, nullptr);
  ::raise(signo);
}

}  // namespace

GracefulStop::GracefulStop() {
  g_first_signal.store(0);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking reads and writes resume instead of failing with EINTR
  ::sigaction(SIGINT, &sa, &g_old_int);
  ::sigaction(SIGTERM, &sa, &g_old_term);
}

GracefulStop::~GracefulStop() {
  ::sigaction(SIGINT, &g_old_int, nullptr);
  ::sigaction(SIGTERM, &g_old_term, nullptr);
}

int GracefulStop::requested() { return g_first_signal.load(); }

const char* GracefulStop::name(int signo) {
  switch (signo) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    default: return "a signal";
  }
}

}  // namespace qad
