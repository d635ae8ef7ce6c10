// DecodeGraphs (decode_graph.h): at::cuda::CUDAGraph with one shared memory pool, where LibTorch has CUDA.
#include "model/decode_graph.h"

#include <map>
#include <set>

#ifdef QAD_HAS_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/torch.h>
#endif

namespace qad::model {

#ifdef QAD_HAS_CUDA
struct DecodeGraphs::Impl {
  bool enabled = false;
  std::map<int64_t, std::unique_ptr<at::cuda::CUDAGraph>> graphs;
  std::set<int64_t> seen;
  at::cuda::MempoolId_t pool{0, 0};
  bool have_pool = false;
};
#else
struct DecodeGraphs::Impl {
  bool enabled = false;
};
#endif

DecodeGraphs::DecodeGraphs(bool enabled) : impl_(std::make_unique<Impl>()) { impl_->enabled = enabled; }
DecodeGraphs::~DecodeGraphs() = default;

void DecodeGraphs::clear() {
#ifdef QAD_HAS_CUDA
  impl_->graphs.clear();
  impl_->seen.clear();
#endif
}

void DecodeGraphs::run(int64_t key, const std::function<void()>& step) {
#ifdef QAD_HAS_CUDA
  auto& s = *impl_;
  if (s.enabled) {
    if (auto it = s.graphs.find(key); it != s.graphs.end()) {
      it->second->replay();
      ++replays_;
      return;
    }
    if (s.seen.insert(key).second) {  // first time: eager (warms cuBLAS workspaces, kernel caches)
      step();
      return;
    }
    auto stream = c10::cuda::getStreamFromPool();
    try {
      if (!s.have_pool) {
        s.pool = at::cuda::graph_pool_handle();
        s.have_pool = true;
      }
      auto graph = std::make_unique<at::cuda::CUDAGraph>();
      torch::cuda::synchronize();
      {
        c10::cuda::CUDAStreamGuard guard(stream);
        graph->capture_begin(s.pool);
        step();
        graph->capture_end();
      }
      torch::cuda::synchronize();
      graph->replay();  // recording does not execute: this is the step's real run
      s.graphs.emplace(key, std::move(graph));
      ++recorded_;
      ++replays_;
      return;
    } catch (const std::exception& e) {
      // End a capture the failure left open, so that the stream and the allocator work normally again.
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(stream.stream(), &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
        cudaGraph_t partial = nullptr;
        cudaStreamEndCapture(stream.stream(), &partial);
        if (partial != nullptr) cudaGraphDestroy(partial);
      }
      (void)cudaGetLastError();
      s.enabled = false;
      s.graphs.clear();
      failure_ = e.what();
      torch::cuda::synchronize();
    }
  }
#else
  (void)key;
#endif
  step();
}

}  // namespace qad::model
