// The one-node launcher (see local_launcher.h).
#include "dist/local_launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "util/error.h"

extern char** environ;

namespace qad::dist {
namespace {

volatile sig_atomic_t g_forward_signal = 0;
volatile sig_atomic_t g_signals_received = 0;
void remember_signal(int sig) {
  g_forward_signal = sig;
  g_signals_received = g_signals_received + 1;
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return fmt::format("was killed by signal {} ({})", sig, strsignal(sig));
  }
  return fmt::format("exited with status {}", WEXITSTATUS(status));
}

// Copies a rank's stderr to ours, one line at a time with "[rank i] " in front.
void forward_prefixed(int fd, int rank) {
  std::string pending;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    pending.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      const std::string line = fmt::format("[rank {}] {}\n", rank, pending.substr(0, nl));
      (void)!::write(STDERR_FILENO, line.data(), line.size());
      pending.erase(0, nl + 1);
    }
  }
  if (!pending.empty()) {
    const std::string line = fmt::format("[rank {}] {}\n", rank, pending);
    (void)!::write(STDERR_FILENO, line.data(), line.size());
  }
  ::close(fd);
}

}  // namespace

int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  QAD_CHECK(s >= 0, "cannot open a socket to find a free port: {}; set MASTER_PORT", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(s);
  QAD_CHECK(ok, "cannot find a free TCP port: {}; set MASTER_PORT", std::strerror(errno));
  return ntohs(a.sin_port);
}

void launch_local(const LocalLaunch& l) {
  QAD_CHECK(l.nproc >= 1, "--nproc-per-node {}: must be at least 1", l.nproc);
  const char* addr_env = std::getenv("MASTER_ADDR");
  const char* port_env = std::getenv("MASTER_PORT");
  const std::string addr = addr_env ? addr_env : "127.0.0.1";
  const std::string port = port_env ? port_env : std::to_string(free_port());
  std::vector<pid_t> pids(l.nproc, -1);
  std::vector<std::thread> forwarders;
  struct sigaction sa{}, old_int{}, old_term{};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  for (int r = 0; r < l.nproc; ++r) {
    int err_pipe[2] = {-1, -1};
    if (r > 0) QAD_CHECK(::pipe(err_pipe) == 0, "pipe: {}", std::strerror(errno));
    const pid_t pid = ::fork();
    QAD_CHECK(pid >= 0, "fork of rank {}: {}", r, std::strerror(errno));
    if (pid == 0) {
      // Its own process group: a Ctrl-C in the terminal reaches the ranks once, through the launcher (the ranks
      // stop gracefully on the first signal and at once on a second). And a rank stops when the launcher dies.
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(l.nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(l.nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", addr.c_str(), 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      if (r > 0) {
        const int devnull = ::open("/dev/null", O_WRONLY);
        if (devnull >= 0) ::dup2(devnull, STDOUT_FILENO);
        ::dup2(err_pipe[1], STDERR_FILENO);
        ::close(err_pipe[0]);
        ::close(err_pipe[1]);
      }
      std::vector<std::string> args = l.args;
      std::vector<char*> argv;
      std::string self = "/proc/self/exe";
      argv.push_back(self.data());
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execve("/proc/self/exe", argv.data(), environ);
      std::fprintf(stderr, "qad: cannot exec /proc/self/exe for rank %d: %s\n", r, std::strerror(errno));
      ::_exit(127);
    }
    pids[r] = pid;
    if (r > 0) {
      ::close(err_pipe[1]);
      forwarders.emplace_back(forward_prefixed, err_pipe[0], r);
    }
  }

  // Supervise: the first rank that fails stops the others.
  int alive = l.nproc, failed_rank = -1, failed_status = 0;
  auto stop_others = [&](int sig) {
    for (int r = 0; r < l.nproc; ++r) {
      if (pids[r] > 0) ::kill(pids[r], sig);
    }
  };
  std::chrono::steady_clock::time_point term_sent{};
  bool terminating = false;
  int signals_forwarded = 0;
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      int r = 0;
      while (r < l.nproc && pids[r] != pid) ++r;
      if (r == l.nproc) continue;
      pids[r] = -1;
      --alive;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      // After a forwarded signal the ranks end on their own (a checkpoint first): that is no failure.
      if (!ok && failed_rank < 0 && signals_forwarded == 0) {
        failed_rank = r;
        failed_status = status;
        if (alive > 0) {
          fmt::print(stderr, "qad: rank {} {}; stopping the other {} rank(s)\n", r, describe_status(status), alive);
          stop_others(SIGTERM);
          terminating = true;
          term_sent = std::chrono::steady_clock::now();
        }
      }
      continue;
    }
    if (g_signals_received > signals_forwarded) {  // each signal the launcher gets, the ranks get once
      stop_others(g_forward_signal);
      signals_forwarded = g_signals_received;
    }
    if (terminating && std::chrono::duration<double>(std::chrono::steady_clock::now() - term_sent).count() > l.grace_s) {
      stop_others(SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (auto& t : forwarders) t.join();
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (failed_rank >= 0) {
    fail("rank {} of {} {}; the job was stopped (the last complete checkpoint is intact: resume with --resume)",
         failed_rank, l.nproc, describe_status(failed_status));
  }
  QAD_CHECK(g_forward_signal == 0, "stopped by signal {} ({}); the ranks wrote a checkpoint if they could: continue "
            "with the same command and --resume", static_cast<int>(g_forward_signal), strsignal(g_forward_signal));
}

}  // namespace qad::dist
