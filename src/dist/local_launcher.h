// `qad distill --nproc-per-node N`: starts the N ranks of a one-node job as child processes of this one
// (fork + exec of /proc/self/exe with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set, a free
// port when MASTER_PORT is unset), forwards their output (rank 0's as is; the others' stderr prefixed with
// "[rank i] ", their stdout dropped) and supervises them: when a rank exits non-zero or is killed, the others
// are stopped and the launcher fails naming the rank and its exit status or signal. Torch-free.
#pragma once
#include <string>
#include <vector>

namespace qad::dist {

struct LocalLaunch {
  int nproc = 1;
  std::vector<std::string> args;  // the command line for each rank, without argv[0] and --nproc-per-node
  double grace_s = 10;            // after SIGTERM, how long the others get before SIGKILL
};

// Runs the ranks to completion. Returns normally when all exit 0; throws qad::Error naming the first rank
// that failed otherwise.
void launch_local(const LocalLaunch& launch);

// A TCP port that was free on 127.0.0.1 a moment ago (bound to port 0 and released).
int free_port();

}  // namespace qad::dist
