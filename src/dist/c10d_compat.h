// The LibTorch-version differences of c10d, in one place (the c10d counterpart of util/torch_compat.h, kept
// apart so that only src/dist/ pulls in the c10d and Gloo/NCCL headers). In 1.13 ProcessGroupGloo and
// ProcessGroupNCCL derive from c10d::ProcessGroup; from 2.0 they are c10d::Backend subclasses with the same
// collective methods. Which backends exist is decided by CMake (src/dist/CMakeLists.txt): QAD_HAVE_GLOO where
// Gloo's headers are found, QAD_HAVE_NCCL in CUDA builds.
#pragma once
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include "util/torch_compat.h"

#if QAD_TORCH_AT_LEAST(2, 0)
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif
#if QAD_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if QAD_HAVE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace qad::dist::compat {

#if QAD_TORCH_AT_LEAST(2, 0)
using BackendBase = c10d::Backend;
#else
using BackendBase = c10d::ProcessGroup;
#endif

// Releases a backend's communicators before it is destroyed (LibTorch >= 2.4 warns otherwise for NCCL).
inline void shutdown(BackendBase& b) {
#if QAD_HAVE_NCCL && QAD_TORCH_AT_LEAST(2, 4)
  if (auto* nccl = dynamic_cast<c10d::ProcessGroupNCCL*>(&b)) nccl->shutdown();
#else
  (void)b;
#endif
}

// Reduce-scatter of one flat buffer into this rank's equal chunk `shard`. NCCL: _reduce_scatter_base (the same
// name in 1.13 and 2.x). Gloo (no reduce-scatter in LibTorch 1.13): an all-to-all of the chunks into `received`
// ([ranks x chunk], allocated here), which the caller sums in rank order after the wait (Communicator::wait):
// the same bandwidth, and a summation order that does not depend on Gloo's algorithm or the number of ranks.
inline c10::intrusive_ptr<c10d::Work> reduce_scatter_flat(BackendBase& b, bool nccl, at::Tensor& flat,
                                                          at::Tensor& shard, at::Tensor& received) {
  if (nccl) return b._reduce_scatter_base(shard, flat, c10d::ReduceScatterOptions());
  received = at::empty_like(flat);
  std::vector<int64_t> equal_splits;  // empty: equal chunks
  return b.alltoall_base(received, flat, equal_splits, equal_splits, c10d::AllToAllOptions());
}

}  // namespace qad::dist::compat
