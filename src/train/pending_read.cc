// See pending_read.h.
#include "train/pending_read.h"

#ifdef QAD_HAS_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "util/error.h"

namespace qad::train {

PendingRead::PendingRead(const torch::Tensor& values) {
  QAD_CHECK(values.defined(), "PendingRead: no values");
  if (!values.is_cuda()) {
    host_ = values.to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true);
    return;
  }
#ifdef QAD_HAS_CUDA
  c10::cuda::CUDAGuard guard(values.device());
  host_ = torch::empty(values.sizes(), values.options().device(torch::kCPU).pinned_memory(true));
  host_.copy_(values, /*non_blocking=*/true);
  auto event = std::make_shared<at::cuda::CUDAEvent>(cudaEventDisableTiming);
  event->record(c10::cuda::getCurrentCUDAStream(values.device().index()));
  landed_ = event;
#else
  fail("PendingRead: a CUDA tensor in a build without CUDA");
#endif
}

const torch::Tensor& PendingRead::wait() {
  QAD_CHECK(!empty(), "PendingRead::wait: nothing was queued");
#ifdef QAD_HAS_CUDA
  if (landed_) {
    static_cast<at::cuda::CUDAEvent*>(landed_.get())->synchronize();
    landed_.reset();
  }
#endif
  return host_;
}

}  // namespace qad::train
