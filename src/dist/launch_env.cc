// Launch environment parsing (see launch_env.h).
#include "dist/launch_env.h"

#include <cerrno>
#include <cstdlib>
#include <limits>

#include "util/error.h"

namespace qad::dist {
namespace {

int parse_int(const std::string& name, const std::string& value, long lo, long hi) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(value.c_str(), &end, 10);
  QAD_CHECK(!value.empty() && end != nullptr && *end == '\0' && errno == 0,
            "{}={}: not an integer; the launcher (torchrun, srun, qad distill --nproc-per-node) sets it to a number",
            name, value);
  QAD_CHECK(v >= lo && v <= hi, "{}={}: must be in [{}, {}]", name, value, lo, hi);
  return static_cast<int>(v);
}

}  // namespace

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

LaunchEnv parse_launch_env(const EnvLookup& env) {
  constexpr long kMaxRanks = 1 << 20;
  LaunchEnv e;
  const auto rank = env("RANK");
  const auto slurm_rank = env("SLURM_PROCID");
  if (rank) {
    e.source = "torchrun";
    const auto world = env("WORLD_SIZE");
    QAD_CHECK(world.has_value(), "RANK={} is set but WORLD_SIZE is not; set both (torchrun does), or unset RANK "
              "for a single process", *rank);
    e.world_size = parse_int("WORLD_SIZE", *world, 1, kMaxRanks);
    e.rank = parse_int("RANK", *rank, 0, kMaxRanks);
    const auto local = env("LOCAL_RANK");
    e.local_rank = local ? parse_int("LOCAL_RANK", *local, 0, kMaxRanks) : (e.world_size == 1 ? 0 : -1);
    QAD_CHECK(e.local_rank >= 0, "RANK={} WORLD_SIZE={} but LOCAL_RANK is not set: it picks the GPU (cuda:LOCAL_RANK); "
              "set it to the rank's index on its node", *rank, *world);
  } else if (slurm_rank) {
    e.source = "slurm";
    const auto ntasks = env("SLURM_NTASKS");
    QAD_CHECK(ntasks.has_value(), "SLURM_PROCID={} is set but SLURM_NTASKS is not; launch with srun", *slurm_rank);
    e.world_size = parse_int("SLURM_NTASKS", *ntasks, 1, kMaxRanks);
    e.rank = parse_int("SLURM_PROCID", *slurm_rank, 0, kMaxRanks);
    const auto local = env("SLURM_LOCALID");
    e.local_rank = local ? parse_int("SLURM_LOCALID", *local, 0, kMaxRanks) : 0;
  } else {
    return e;  // one process, no rendezvous
  }
  QAD_CHECK(e.rank < e.world_size, "{}={} is outside [0, {}={})", e.source == "slurm" ? "SLURM_PROCID" : "RANK",
            e.rank, e.source == "slurm" ? "SLURM_NTASKS" : "WORLD_SIZE", e.world_size);
  if (e.world_size == 1) return e;
  const auto addr = env("MASTER_ADDR");
  QAD_CHECK(addr.has_value() && !addr->empty(),
            "a {}-rank job needs MASTER_ADDR (the host of rank 0; under SLURM e.g. "
            "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)) and MASTER_PORT",
            e.world_size);
  e.master_addr = *addr;
  const auto port = env("MASTER_PORT");
  QAD_CHECK(port.has_value(), "a {}-rank job needs MASTER_PORT (a free TCP port on {}, e.g. 29500)", e.world_size,
            e.master_addr);
  e.master_port = parse_int("MASTER_PORT", *port, 1, 65535);
  return e;
}

}  // namespace qad::dist
