// Which process of a data-parallel job this is, from the environment the usual launchers set: torchrun
// (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), SLURM's srun (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE when RANK is absent) and `qad distill --nproc-per-node`.
// Torch-free; docs/dist.md.
#pragma once
#include <functional>
#include <optional>
#include <string>

namespace qad::dist {

struct LaunchEnv {
  int rank = 0, world_size = 1;
  int local_rank = 0;                 // the GPU this rank uses: cuda:local_rank
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;            // the TCPStore that rank 0 serves
  std::string source = "none";        // "torchrun" (RANK...), "slurm" or "none" (a single process)
};

// Looks a variable up; std::nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup process_env();

// Throws qad::Error naming the variable, its value and the fix when the environment is incomplete or
// inconsistent (a rank outside [0, WORLD_SIZE), a non-numeric value, a multi-process job without
// MASTER_ADDR under SLURM, ...). No variables at all: one process.
LaunchEnv parse_launch_env(const EnvLookup& env);

}  // namespace qad::dist
