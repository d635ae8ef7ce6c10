// The collectives a data-parallel run needs, over one c10d backend: NCCL when the ranks compute on CUDA
// (each on cuda:LOCAL_RANK), Gloo on CPU. Rendezvous through a c10d TCPStore that rank 0 serves at
// MASTER_ADDR:MASTER_PORT. Every blocking call has the --dist-timeout: a rank that died or hangs makes the
// others fail with a qad::Error naming the collective instead of hanging. c10d types stay in the .cc.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

#include "dist/launch_env.h"

namespace qad::dist {

class Communicator {
 public:
  // Blocks until all world_size ranks have joined (or the timeout passes). `device`: the rank's compute
  // device; CUDA selects NCCL (and makes the device current), CPU selects Gloo.
  static std::unique_ptr<Communicator> connect(const LaunchEnv& env, torch::Device device, double timeout_s);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const;
  int size() const;
  torch::Device device() const;  // where tensors given to the collectives must live
  std::string backend() const;   // "nccl" | "gloo"

  // Sum in place, started now and finished by wait_all (in start order). Every rank must start the same
  // collectives in the same order.
  void allreduce_async(torch::Tensor t);
  void wait_all(const std::string& what);

  void allreduce_sum(torch::Tensor t, const std::string& what);
  void allreduce_max(torch::Tensor t, const std::string& what);
  void broadcast(torch::Tensor t, int root, const std::string& what);
  // flat holds size() equal chunks; this rank's chunk rank() is the input, the others are filled in.
  void allgather_in_place(torch::Tensor flat, const std::string& what);
  void barrier(const std::string& what);

  // Fully sharded training (train/fully_sharded.h): collectives started now and finished by wait(), so that
  // the next layer's parameters travel while this one computes. Every rank starts them in the same order.
  struct Pending;
  // allgather_in_place, started.
  std::shared_ptr<Pending> allgather_async(torch::Tensor flat, const std::string& what);
  // Sums `flat` (size() equal chunks) over the ranks and leaves chunk rank() of the sum in `shard`: NCCL's
  // reduce-scatter; Gloo (which has none in LibTorch 1.13) exchanges the chunks all-to-all and wait() sums them
  // in rank order (layout-invariant: docs/dist.md). `flat` is left as it was on Gloo, undefined on NCCL.
  std::shared_ptr<Pending> reduce_scatter_async(torch::Tensor flat, torch::Tensor shard, const std::string& what);
  void wait(Pending& p);

 private:
  struct Impl;
  explicit Communicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace qad::dist
