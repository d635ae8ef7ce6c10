// Linked into every test executable: a crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) prints the signal and
// the stack (function names thanks to -rdynamic; demangle with c++filt) before the process dies as it would
// have. A GPU-machine run that only says "Segmentation fault" costs a device call to locate; this saves it.
#include <execinfo.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <initializer_list>

namespace {

void on_crash(int sig) {
  const char* name = strsignal(sig);
  const char head[] = "\n*** test crashed with signal: ";
  (void)!write(STDERR_FILENO, head, sizeof(head) - 1);
  (void)!write(STDERR_FILENO, name, strlen(name));
  (void)!write(STDERR_FILENO, "; stack:\n", 9);
  void* frames[64];
  const int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

const bool installed = [] {
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) std::signal(sig, on_crash);
  return true;
}();

}  // namespace
