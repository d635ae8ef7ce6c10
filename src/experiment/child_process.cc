// fork + exec of the runner's children (see child_process.h). Everything the child needs is built before the
// fork, so that between fork and exec it only calls async-signal-safe functions.
#include "experiment/child_process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"

extern char** environ;

namespace qad::experiment {
namespace {

int open_output(const std::filesystem::path& path, bool truncate) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : O_APPEND), 0644);
  QAD_CHECK(fd >= 0, "{}: cannot open it for writing: {}", path.string(), std::strerror(errno));
  return fd;
}

}  // namespace

pid_t spawn_child(const ChildSpec& spec) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string entry(*e);
    bool replaced = false;
    for (const auto& [k, v] : spec.env) replaced |= entry.rfind(k + "=", 0) == 0;
    if (!replaced) env.push_back(entry);
  }
  for (const auto& [k, v] : spec.env) env.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = spec.args;
  std::string exe = spec.executable;
  argv.push_back(exe.data());
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const int out_fd = open_output(spec.stdout_path, spec.truncate_stdout);
  const int err_fd = spec.stderr_path == spec.stdout_path ? out_fd : open_output(spec.stderr_path, false);
  const int in_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const std::string exec_failed = fmt::format("qad experiment: cannot execute {}: ", exe);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(128 + SIGTERM);  // the runner died before prctl took effect
    if (in_fd >= 0) ::dup2(in_fd, STDIN_FILENO);
    ::dup2(out_fd, STDOUT_FILENO);
    ::dup2(err_fd, STDERR_FILENO);
    ::execve(exe.c_str(), argv.data(), envp.data());
    const char* why = std::strerror(errno);
    (void)!::write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
    (void)!::write(STDERR_FILENO, why, std::strlen(why));
    (void)!::write(STDERR_FILENO, "\n", 1);
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::close(out_fd);
  if (err_fd != out_fd) ::close(err_fd);
  if (in_fd >= 0) ::close(in_fd);
  QAD_CHECK(pid > 0, "cannot start {}: fork failed: {}", exe, std::strerror(fork_errno));
  ::setpgid(pid, pid);  // also from here, so that a signal sent right after spawn finds the group
  return pid;
}

std::optional<int> poll_child(pid_t pid) {
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r == 0) return std::nullopt;
    if (errno == EINTR) continue;
    fail("waiting for child process {}: {}", pid, std::strerror(errno));
  }
}

std::string describe_exit(int wait_status) {
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    return fmt::format("was killed by signal {} ({})", sig, strsignal(sig));
  }
  return fmt::format("exited with status {}", WEXITSTATUS(wait_status));
}

int exit_code(int wait_status) {
  return WIFSIGNALED(wait_status) ? 128 + WTERMSIG(wait_status) : WEXITSTATUS(wait_status);
}

}  // namespace qad::experiment
