// Linked into every test executable: a crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) prints the signal, the
// faulting address, the instruction that faulted (library and nearest symbol: the unwinder cannot always walk
// out of a signal frame), the thread, and the stack (names thanks to -rdynamic; demangle with c++filt) before
// the process dies as it would have. A GPU-machine run that only says "Segmentation fault" costs a device call
// to locate; this saves it. The handler runs on its own stack so that a stack overflow is reported too.
#include <dlfcn.h>
#include <execinfo.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <initializer_list>

namespace {

void say(const char* s) { (void)!write(STDERR_FILENO, s, strlen(s)); }

// snprintf is not async-signal-safe in general, but glibc's formats integers and strings without allocating.
void say_pc(const char* what, void* pc) {
  char line[512];
  Dl_info info{};
  if (pc != nullptr && dladdr(pc, &info) != 0) {
    const auto sym_off = info.dli_saddr ? static_cast<char*>(pc) - static_cast<char*>(info.dli_saddr) : 0;
    snprintf(line, sizeof line, "%s %p in %s (%s+0x%lx; library offset 0x%lx)\n", what, pc,
             info.dli_fname ? info.dli_fname : "?", info.dli_sname ? info.dli_sname : "?",
             static_cast<unsigned long>(sym_off),
             static_cast<unsigned long>(static_cast<char*>(pc) - static_cast<char*>(info.dli_fbase)));
  } else {
    snprintf(line, sizeof line, "%s %p (no library)\n", what, pc);
  }
  say(line);
}

void on_crash(int sig, siginfo_t* info, void* context) {
#if defined(__x86_64__)
  const auto* regs = context ? static_cast<const ucontext_t*>(context)->uc_mcontext.gregs : nullptr;
#else
  (void)context;
#endif
  char line[256];
  snprintf(line, sizeof line, "\n*** test crashed with signal: %s (fault address %p, thread %ld of process %d)\n",
           strsignal(sig), info ? info->si_addr : nullptr, static_cast<long>(syscall(SYS_gettid)),
           static_cast<int>(getpid()));
  say(line);
#if defined(__x86_64__)
  if (regs != nullptr) say_pc("faulting instruction", reinterpret_cast<void*>(regs[REG_RIP]));
#endif
  say("stack:\n");
  void* frames[64];
  const int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
#if defined(__x86_64__)
  // Last, since reading it faults again (and kills the process) when the stack pointer itself is bad: the return
  // address on top of the faulting frame's stack, i.e. the caller when the fault hit a leaf function.
  const auto* sp = regs ? reinterpret_cast<void* const*>(regs[REG_RSP]) : nullptr;
  if (sp != nullptr) say_pc("return address at the stack pointer", *sp);
#endif
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

const bool installed = [] {
  static char alt_stack[1 << 16];
  stack_t ss{};
  ss.ss_sp = alt_stack;
  ss.ss_size = sizeof alt_stack;
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = on_crash;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(sig, &sa, nullptr);
  return true;
}();

}  // namespace
