// c10d-backed collectives (see communicator.h).
#include "dist/communicator.h"

#include <fmt/format.h>

#include <chrono>
#include <vector>

#include "dist/c10d_compat.h"
#include "util/error.h"

namespace qad::dist {

struct Communicator::Impl {
  LaunchEnv env;
  torch::Device device{torch::kCPU};
  double timeout_s = 0;
  std::string backend_name;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<compat::BackendBase> pg;
  std::vector<c10::intrusive_ptr<c10d::Work>> pending;

  [[noreturn]] void failed(const std::string& what, const std::exception& e) const {
    fail("rank {}/{}: {} ({}) failed: {}\nAnother rank has probably died or stopped responding (--dist-timeout {} s); "
         "the job stops here. The last complete checkpoint is intact: fix the cause and continue with --resume",
         env.rank, env.world_size, what, backend_name, e.what(), timeout_s);
  }
  void wait(c10::intrusive_ptr<c10d::Work>& w, const std::string& what) {
    try {
      w->wait();
    } catch (const qad::Error&) {
      throw;
    } catch (const std::exception& e) {
      failed(what, e);
    }
  }
};

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Communicator::~Communicator() {
  if (impl_ && impl_->pg) {
    try {
      compat::shutdown(*impl_->pg);
    } catch (...) {
    }
  }
}

std::unique_ptr<Communicator> Communicator::connect(const LaunchEnv& env, torch::Device device, double timeout_s) {
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->device = device;
  impl->timeout_s = timeout_s;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(env.master_port);
    so.isServer = env.rank == 0;
    so.numWorkers = static_cast<std::size_t>(env.world_size);
    so.waitWorkers = true;
    so.timeout = timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    fail("rank {}/{}: rendezvous at {}:{} failed within --dist-timeout {} s: {}\nCheck that every rank was started, "
         "that MASTER_ADDR/MASTER_PORT name rank 0's host and a free port, and that the port is reachable",
         env.rank, env.world_size, env.master_addr, env.master_port, timeout_s, e.what());
  }
  if (device.is_cuda()) {
#if QAD_HAVE_NCCL
    // "cuda" without an index means the current device (NCCL binds the group to one).
    c10::cuda::set_device(device.has_index() ? device.index() : c10::cuda::current_device());
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    impl->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, env.rank, env.world_size, opts);
    impl->backend_name = "nccl";
#else
    fail("rank {}: multi-GPU training needs NCCL, and this qad was built without CUDA; rebuild with a CUDA LibTorch",
         env.rank);
#endif
  } else {
#if QAD_HAVE_GLOO
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    const bool loopback = env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (loopback) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    try {
      impl->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, env.rank, env.world_size, opts);
    } catch (const std::exception& e) {
      fail("rank {}/{}: connecting the Gloo process group failed within --dist-timeout {} s: {}", env.rank,
           env.world_size, timeout_s, e.what());
    }
    impl->backend_name = "gloo";
#else
    fail("rank {}: multi-process CPU training needs Gloo, which this LibTorch build does not ship headers for; "
         "run on CUDA (NCCL) or install libgloo-dev and rebuild", env.rank);
#endif
  }
  return std::unique_ptr<Communicator>(new Communicator(std::move(impl)));
}

int Communicator::rank() const { return impl_->env.rank; }
int Communicator::size() const { return impl_->env.world_size; }
torch::Device Communicator::device() const { return impl_->device; }
std::string Communicator::backend() const { return impl_->backend_name; }

void Communicator::allreduce_async(torch::Tensor t) {
  std::vector<at::Tensor> ts{t};
  try {
    impl_->pending.push_back(impl_->pg->allreduce(ts, c10d::AllreduceOptions()));
  } catch (const std::exception& e) {
    impl_->failed("all-reduce of a gradient bucket", e);
  }
}

void Communicator::wait_all(const std::string& what) {
  auto pending = std::move(impl_->pending);
  impl_->pending.clear();
  for (auto& w : pending) impl_->wait(w, what);
}

void Communicator::allreduce_sum(torch::Tensor t, const std::string& what) {
  std::vector<at::Tensor> ts{t};
  try {
    auto w = impl_->pg->allreduce(ts, c10d::AllreduceOptions());
    impl_->wait(w, what);
  } catch (const qad::Error&) {
    throw;
  } catch (const std::exception& e) {
    impl_->failed(what, e);
  }
}

void Communicator::allreduce_max(torch::Tensor t, const std::string& what) {
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  try {
    auto w = impl_->pg->allreduce(ts, o);
    impl_->wait(w, what);
  } catch (const qad::Error&) {
    throw;
  } catch (const std::exception& e) {
    impl_->failed(what, e);
  }
}

void Communicator::broadcast(torch::Tensor t, int root, const std::string& what) {
  std::vector<at::Tensor> ts{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  try {
    auto w = impl_->pg->broadcast(ts, o);
    impl_->wait(w, what);
  } catch (const qad::Error&) {
    throw;
  } catch (const std::exception& e) {
    impl_->failed(what, e);
  }
}

void Communicator::allgather_in_place(torch::Tensor flat, const std::string& what) {
  const int n = size();
  QAD_CHECK(flat.dim() == 1 && flat.numel() % n == 0, "allgather: a flat buffer of {} elements is not {} chunks",
            flat.numel(), n);
  const int64_t chunk = flat.numel() / n;
  auto mine = flat.narrow(0, rank() * chunk, chunk);
  try {
    c10::intrusive_ptr<c10d::Work> w;
    if (impl_->backend_name == "nccl") {
      w = impl_->pg->_allgather_base(flat, mine, c10d::AllgatherOptions());  // NCCL gathers in place
    } else {
      std::vector<std::vector<at::Tensor>> out(1);
      for (int r = 0; r < n; ++r) out[0].push_back(flat.narrow(0, r * chunk, chunk));
      std::vector<at::Tensor> in{mine};
      w = impl_->pg->allgather(out, in, c10d::AllgatherOptions());
    }
    impl_->wait(w, what);
  } catch (const qad::Error&) {
    throw;
  } catch (const std::exception& e) {
    impl_->failed(what, e);
  }
}

struct Communicator::Pending {
  c10::intrusive_ptr<c10d::Work> work;
  std::string what;
  torch::Tensor received, shard;  // Gloo's reduce-scatter: the ranks' chunks, summed in rank order after the wait
  bool done = false;
};

std::shared_ptr<Communicator::Pending> Communicator::allgather_async(torch::Tensor flat, const std::string& what) {
  const int n = size();
  QAD_CHECK(flat.dim() == 1 && flat.numel() % n == 0, "allgather: a flat buffer of {} elements is not {} chunks",
            flat.numel(), n);
  auto p = std::make_shared<Pending>();
  p->what = what;
  const int64_t chunk = flat.numel() / n;
  auto mine = flat.narrow(0, rank() * chunk, chunk);
  try {
    if (impl_->backend_name == "nccl") {
      p->work = impl_->pg->_allgather_base(flat, mine, c10d::AllgatherOptions());
    } else {
      std::vector<std::vector<at::Tensor>> out(1);
      for (int r = 0; r < n; ++r) out[0].push_back(flat.narrow(0, r * chunk, chunk));
      std::vector<at::Tensor> in{mine};
      p->work = impl_->pg->allgather(out, in, c10d::AllgatherOptions());
    }
  } catch (const std::exception& e) {
    impl_->failed(what, e);
  }
  return p;
}

std::shared_ptr<Communicator::Pending> Communicator::reduce_scatter_async(torch::Tensor flat, torch::Tensor shard,
                                                                          const std::string& what) {
  const int n = size();
  QAD_CHECK(flat.dim() == 1 && flat.numel() % n == 0 && shard.numel() == flat.numel() / n,
            "reduce-scatter: {} elements into shards of {} over {} ranks", flat.numel(), shard.numel(), n);
  auto p = std::make_shared<Pending>();
  p->what = what;
  try {
    p->work = compat::reduce_scatter_flat(*impl_->pg, impl_->backend_name == "nccl", flat, shard, p->received);
  } catch (const std::exception& e) {
    impl_->failed(what, e);
  }
  if (p->received.defined()) p->shard = shard;
  return p;
}

void Communicator::wait(Pending& p) {
  if (p.done) return;
  p.done = true;
  impl_->wait(p.work, p.what);
  if (p.received.defined()) {
    // Rank 0's chunk, then + rank 1's, + rank 2's, ...: the order in which one process accumulates the gradients
    // of its micro-batches 0, 1, 2, ... (the loader gives rank r the rows of micro-batch r), so W ranks sum the
    // same numbers in the same order as one process with W micro-batches (docs/dist.md).
    const int64_t chunk = p.shard.numel();
    auto sum = p.shard.view({-1});
    sum.copy_(p.received.narrow(0, 0, chunk));
    for (int q = 1; q < size(); ++q) sum.add_(p.received.narrow(0, q * chunk, chunk));
  }
  p.work.reset();
  p.received = p.shard = torch::Tensor();
}

void Communicator::barrier(const std::string& what) {
  // An all-reduce of one element: the same on every backend and version (c10d's barrier needs device hints).
  auto t = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat32).device(impl_->device));
  allreduce_sum(t, what);
}

}  // namespace qad::dist
