// One child process of the grid runner: a `qad distill` or `qad eval` with its output in files. Each child is
// the leader of its own process group, so that a Ctrl-C in the terminal reaches it once, through the runner
// (qad distill stops at once on a second signal), and it gets SIGTERM when the runner dies.
#pragma once
#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace qad::experiment {

struct ChildSpec {
  std::string executable;
  std::vector<std::string> args;  // argv[1...]
  std::filesystem::path stdout_path, stderr_path;  // opened for appending; the same path: one file for both
  bool truncate_stdout = false;                    // start stdout_path empty (captured output)
  std::vector<std::pair<std::string, std::string>> env;  // set or replaced in the runner's environment
};

// Starts the child; throws qad::Error naming the file when an output cannot be opened or fork fails. A
// program that cannot be executed exits with status 127 after a line in its stderr file.
pid_t spawn_child(const ChildSpec& spec);

// The child's wait status once it has ended; nullopt while it runs.
std::optional<int> poll_child(pid_t pid);

// "exited with status 3", "was killed by signal 9 (Killed)".
std::string describe_exit(int wait_status);

// The exit status, or 128 + the signal as a shell reports it.
int exit_code(int wait_status);

}  // namespace qad::experiment
