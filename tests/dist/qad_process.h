// Running the qad binary (QAD_BINARY, set per test target) as child processes, for the multi-process tests of
// data-parallel and fully sharded training: start it with extra environment variables and a log file, wait with a
// hang guard, edit its command line, read its log and its loss curves, pick a free port for a rendezvous.
#pragma once
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace qad::testing {

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A port the kernel just gave out (another process may still take it before the rendezvous binds it: rare).
inline int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) throw std::runtime_error("free_port: socket() failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  const bool ok = ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(s);
  if (!ok) throw std::runtime_error("free_port: no port on the loopback interface");
  return ntohs(a.sin_port);
}

// Starts the qad binary with extra environment variables, in a process group of its own (so that the hang guard
// below also stops the ranks a local launcher started); stdout+stderr go to `log`.
inline pid_t spawn(const std::vector<std::string>& args, const std::filesystem::path& log,
                   const std::map<std::string, std::string>& env) {
  pid_t pid = fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    FILE* out = std::freopen(log.c_str(), "w", stdout);
    (void)out;
    dup2(fileno(stdout), fileno(stderr));
    std::vector<std::string> copy = args;
    std::string bin = QAD_BINARY;
    std::vector<char*> argv{bin.data()};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  if (pid > 0) ::setpgid(pid, pid);  // (both sides set it: whichever runs first)
  return pid;
}

// Waits for a child; a child still running after `limit_s` is killed (a hang guard, not a timing check) and
// the status says so.
inline int wait_for(pid_t pid, double limit_s, bool* hung = nullptr) {
  const auto start = std::chrono::steady_clock::now();
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > limit_s) {
      ::kill(-pid, SIGKILL);  // the whole group: a launcher and its ranks
      ::waitpid(pid, &status, 0);
      if (hung) *hung = true;
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return status;
}

// step -> the last logged value of `key` for that step in a run's metrics.jsonl train lines (NaN for null).
inline std::map<int64_t, double> curve(const std::filesystem::path& run, const std::string& key = "loss") {
  std::map<int64_t, double> out;
  std::ifstream f(run / "metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["type"] == "train") out[j["step"].get<int64_t>()] = j[key].is_null() ? NAN : j[key].get<double>();
  }
  return out;
}

inline bool exited_ok(int st) { return WIFEXITED(st) && WEXITSTATUS(st) == 0; }

// Sets `--flag value` in a command line, replacing the value when the flag is already there (CLI11 refuses
// a flag given twice).
inline void set_flag(std::vector<std::string>& a, const std::string& flag, const std::string& value) {
  for (size_t i = 0; i + 1 < a.size(); ++i) {
    if (a[i] == flag) {
      a[i + 1] = value;
      return;
    }
  }
  a.insert(a.end(), {flag, value});
}

}  // namespace qad::testing
