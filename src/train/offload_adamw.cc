// AdamW with offloaded state (see offload_adamw.h). Why the update runs on the GPU and the state streams through
// it, rather than AdamW on the host CPU (docs/train.md, "Offload"): per parameter the GPU update moves 12 bytes
// each way over the host link (both directions at once, ~50 GB/s each on PCIe Gen5 x16) and 24 bytes of host
// memory traffic by DMA, with no CPU work; a CPU update moves only 2 + 2 bytes over the link but reads and
// writes 28 bytes of host memory with 16 cores (~100 GB/s at best on such a host) and needs its own vectorised
// kernel with the same bits. The times come out alike (~2 s for 8B parameters), so the GPU path wins on exactness
// (it is the non-offloaded kernel itself) and leaves the host CPU to the data loader.
#include "train/offload_adamw.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>

#ifdef QAD_HAS_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include "train/fused_adamw.h"
#include "train/host_buffer.h"
#include "util/error.h"
#include "util/torch_format.h"

namespace qad::train {

// The copy side of the pipeline on CUDA: a stream for host-to-device copies, one for device-to-host copies, and per
// slot the events that order them around the update on the compute (current) stream:
//   fetch k (h2d, after slot k % S was stored)  →  update k (compute, after the fetch)  →  store k (d2h, after it).
#ifdef QAD_HAS_CUDA
struct OffloadAdamW::Streams {
  c10::cuda::CUDAStream h2d, d2h;
  std::vector<cudaEvent_t> fetched, updated, stored;
  std::vector<bool> used;
  cudaEvent_t start = nullptr, end = nullptr;  // timing of the whole update

  Streams(c10::DeviceIndex device, int slots)
      : h2d(c10::cuda::getStreamFromPool(false, device)), d2h(c10::cuda::getStreamFromPool(false, device)) {
    for (auto* v : {&fetched, &updated, &stored}) {
      v->resize(static_cast<size_t>(slots));
      for (auto& e : *v) C10_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    used.assign(static_cast<size_t>(slots), false);
    C10_CUDA_CHECK(cudaEventCreate(&start));
    C10_CUDA_CHECK(cudaEventCreate(&end));
  }
  ~Streams() {
    for (auto* v : {&fetched, &updated, &stored}) {
      for (auto& e : *v) cudaEventDestroy(e);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(end);
  }
  static void copy(const torch::Tensor& dst, const torch::Tensor& src, cudaMemcpyKind kind, cudaStream_t s) {
    C10_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), static_cast<size_t>(src.numel()) * sizeof(float),
                                   kind, s));
  }
};
#else
struct OffloadAdamW::Streams {};
#endif

OffloadAdamW::OffloadAdamW(NamedTensors params, const OptimConfig& options, Staging staging)
    : options_(options), staging_(staging) {
  torch::NoGradGuard ng;
  QAD_CHECK(!params.empty(), "--offload optimizer: no trainable parameters");
  QAD_CHECK(staging_.chunk_elements > 0 && staging_.slots >= 2, "OffloadAdamW: chunk_elements must be > 0 and slots "
            ">= 2 (got {}, {})", staging_.chunk_elements, staging_.slots);
  device_ = params.front().second.device();
  for (auto& [name, p] : params) {
    QAD_CHECK(p.device() == device_, "--offload optimizer: '{}' is on {}, the other parameters on {}", name,
              p.device().str(), device_.str());
    QAD_CHECK(p.scalar_type() == torch::kBFloat16 || p.scalar_type() == torch::kFloat32,
              "--offload optimizer: '{}' is {}; the offloaded update takes BF16 (the GPU's training dtype) or FP32 "
              "parameters", name, c10::toString(p.scalar_type()));
    p.set_requires_grad(true);
    Param q;
    q.name = name;
    q.param = p;
    q.offset = total_;
    q.low = p.scalar_type() == torch::kBFloat16;
    q.decay = p.dim() >= 2;  // AdamW's rule: no decay on norms and biases
    total_ += p.numel();
    params_.push_back(std::move(q));
  }
#ifdef QAD_HAS_CUDA
  const bool pinned = device_.is_cuda();
#else
  QAD_CHECK(!device_.is_cuda(), "--offload optimizer: this build has no CUDA kernels");
  const bool pinned = false;
#endif
  const int64_t need = host_bytes();
  if (pinned) {
    if (auto avail = available_host_bytes()) {
      QAD_CHECK(need < *avail, "--offload optimizer: the FP32 master weights and AdamW moments need {:.1f} GB of host "
                "memory ({} parameters x 12 bytes), this machine has {:.1f} GB available; free host memory, or "
                "shard the optimizer state over several GPUs (--nproc-per-node N, ZeRO-1)",
                static_cast<double>(need) / 1e9, total_, static_cast<double>(*avail) / 1e9);
    }
  }
  master_ = host_buffer(total_, torch::kFloat32, pinned);
  exp_avg_ = host_buffer(total_, torch::kFloat32, pinned);
  exp_avg_sq_ = host_buffer(total_, torch::kFloat32, pinned);
  exp_avg_.zero_();
  exp_avg_sq_.zero_();
  const int64_t chunk = std::max<int64_t>(1, std::min(staging_.chunk_elements, total_));
  for (const auto& q : params_) {
    // Widened on the device a chunk at a time (BF16 -> FP32 is exact), then one plain copy into host memory.
    const auto flat = q.param.detach().reshape({-1});
    for (int64_t at = 0; at < flat.numel(); at += chunk) {
      const int64_t len = std::min(chunk, flat.numel() - at);
      master_.narrow(0, q.offset + at, len).copy_(flat.narrow(0, at, len).to(torch::kFloat32));
    }
  }
  staging_.chunk_elements = chunk;
  for (int s = 0; s < staging_.slots; ++s) {
    slots_.push_back(torch::empty({3, chunk}, torch::TensorOptions().dtype(torch::kFloat32).device(device_)));
  }
#ifdef QAD_HAS_CUDA
  if (device_.is_cuda()) {
    c10::cuda::CUDAGuard guard(device_);
    streams_ = std::make_unique<Streams>(device_.index(), staging_.slots);
  }
#endif
}

OffloadAdamW::~OffloadAdamW() {
  try {
    wait_for_copies();  // no copy may still target the host buffers when they are freed
  } catch (...) {
  }
}

int64_t OffloadAdamW::host_bytes() const { return 3 * total_ * static_cast<int64_t>(sizeof(float)); }

int64_t OffloadAdamW::device_bytes() const {
  return static_cast<int64_t>(slots_.size()) * 3 * staging_.chunk_elements * static_cast<int64_t>(sizeof(float));
}

std::string OffloadAdamW::describe() const {
  return fmt::format("optimizer offload: FP32 master weights and AdamW moments of {} parameters in {} host memory "
                     "({:.2f} GB); {} device slots of {} elements ({:.2f} GB) stream them through the fused update",
                     total_, streams_ ? "page-locked" : "plain", static_cast<double>(host_bytes()) / 1e9,
                     slots_.size(), staging_.chunk_elements, static_cast<double>(device_bytes()) / 1e9);
}

void OffloadAdamW::wait_for_copies() const {
#ifdef QAD_HAS_CUDA
  if (streams_) {
    c10::cuda::CUDAGuard guard(device_);
    C10_CUDA_CHECK(cudaStreamSynchronize(streams_->d2h.stream()));
    C10_CUDA_CHECK(cudaStreamSynchronize(c10::cuda::getCurrentCUDAStream(device_.index()).stream()));
  }
#endif
}

double OffloadAdamW::last_update_ms() const {
#ifdef QAD_HAS_CUDA
  if (streams_) {
    c10::cuda::CUDAGuard guard(device_);
    C10_CUDA_CHECK(cudaEventSynchronize(streams_->end));
    float ms = 0;
    C10_CUDA_CHECK(cudaEventElapsedTime(&ms, streams_->start, streams_->end));
    return ms;
  }
#endif
  return 0.0;
}

double OffloadAdamW::grad_norm() const {
  std::vector<torch::Tensor> ps;
  for (const auto& q : params_) ps.push_back(q.param);
  return global_grad_norm(ps);
}

torch::Tensor OffloadAdamW::grad_norm_tensor() const {
  std::vector<torch::Tensor> grads;
  for (const auto& q : params_) {
    if (q.param.grad().defined()) grads.push_back(q.param.grad());
  }
  return grad_square_sum(grads).sqrt();
}

void OffloadAdamW::scale_grads(double factor) {
  torch::NoGradGuard ng;
  for (auto& q : params_) {
    auto g = q.param.grad();
    if (g.defined()) g.mul_(factor);
  }
}

void OffloadAdamW::zero_grad() {
  for (auto& q : params_) q.param.mutable_grad().reset();
}

void OffloadAdamW::step(double lr) {
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  step_on_device(lr, torch::ones({}, opts), torch::ones({}, opts));
}

void OffloadAdamW::step_on_device(double lr, const torch::Tensor& grad_scale, const torch::Tensor& apply,
                                  const torch::Tensor& previous_apply) {
  torch::NoGradGuard ng;
  ++t_;
  const auto scalars = adamw_scalars(lr, options_, t_);
  const auto previous = previous_step(lr, options_, t_, previous_apply);
  const bool decay_on = options_.weight_decay != 0;
  std::vector<torch::Tensor> grads(params_.size());  // flat, contiguous; alive until the launches are queued
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& g = params_[i].param.grad();
    if (g.defined()) grads[i] = g.contiguous().view({-1});
  }
  const int64_t chunk = staging_.chunk_elements;
  const int slots = staging_.slots;
  auto host_range = [&](const torch::Tensor& h, int64_t at, int64_t len) { return h.narrow(0, at, len); };
#ifdef QAD_HAS_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;
  cudaStream_t compute = nullptr;
  if (streams_) {
    guard.emplace(device_);
    compute = c10::cuda::getCurrentCUDAStream(device_.index()).stream();
    // The copy streams start after everything queued so far (the previous update's stores, a load_state).
    C10_CUDA_CHECK(cudaEventRecord(streams_->start, compute));
    C10_CUDA_CHECK(cudaStreamWaitEvent(streams_->h2d.stream(), streams_->start, 0));
  }
#endif
  auto fetch = [&](int s, int64_t at, int64_t len) {
    const torch::Tensor* host[3] = {&master_, &exp_avg_, &exp_avg_sq_};
#ifdef QAD_HAS_CUDA
    if (streams_) {
      auto h2d = streams_->h2d.stream();
      if (streams_->used[static_cast<size_t>(s)]) {
        C10_CUDA_CHECK(cudaStreamWaitEvent(h2d, streams_->stored[static_cast<size_t>(s)], 0));
      }
      for (int r = 0; r < 3; ++r) {
        Streams::copy(slots_[s][r].narrow(0, 0, len), host_range(*host[r], at, len), cudaMemcpyHostToDevice, h2d);
      }
      C10_CUDA_CHECK(cudaEventRecord(streams_->fetched[static_cast<size_t>(s)], h2d));
      C10_CUDA_CHECK(cudaStreamWaitEvent(compute, streams_->fetched[static_cast<size_t>(s)], 0));
      return;
    }
#endif
    for (int r = 0; r < 3; ++r) slots_[s][r].narrow(0, 0, len).copy_(host_range(*host[r], at, len));
  };
  auto store = [&](int s, int64_t at, int64_t len) {
    const torch::Tensor* host[3] = {&master_, &exp_avg_, &exp_avg_sq_};
#ifdef QAD_HAS_CUDA
    if (streams_) {
      auto d2h = streams_->d2h.stream();
      C10_CUDA_CHECK(cudaEventRecord(streams_->updated[static_cast<size_t>(s)], compute));
      C10_CUDA_CHECK(cudaStreamWaitEvent(d2h, streams_->updated[static_cast<size_t>(s)], 0));
      for (int r = 0; r < 3; ++r) {
        Streams::copy(host_range(*host[r], at, len), slots_[s][r].narrow(0, 0, len), cudaMemcpyDeviceToHost, d2h);
      }
      C10_CUDA_CHECK(cudaEventRecord(streams_->stored[static_cast<size_t>(s)], d2h));
      streams_->used[static_cast<size_t>(s)] = true;
      return;
    }
#endif
    for (int r = 0; r < 3; ++r) host_range(*host[r], at, len).copy_(slots_[s][r].narrow(0, 0, len));
  };

  size_t first = 0;  // the first parameter that can still intersect a chunk (chunks advance monotonically)
  for (int64_t k = 0, at = 0; at < total_; ++k, at += chunk) {
    const int64_t len = std::min(chunk, total_ - at);
    const int s = static_cast<int>(k % slots);
    fetch(s, at, len);
    std::vector<AdamWTensors> ts;
    std::vector<std::pair<torch::Tensor, torch::Tensor>> fp32_params;  // (model tensor, updated master)
    while (first < params_.size() && params_[first].offset + params_[first].param.numel() <= at) ++first;
    for (size_t i = first; i < params_.size() && params_[i].offset < at + len; ++i) {
      const auto& q = params_[i];
      const int64_t lo = std::max(at, q.offset), hi = std::min(at + len, q.offset + q.param.numel());
      if (hi <= lo || !grads[i].defined()) continue;  // no gradient: untouched, as AdamW leaves it
      auto slot_part = [&](int r) { return slots_[s][r].narrow(0, lo - at, hi - lo); };
      auto model_part = q.param.detach().view({-1}).narrow(0, lo - q.offset, hi - lo);
      ts.push_back({slot_part(0), slot_part(1), slot_part(2), grads[i].narrow(0, lo - q.offset, hi - lo),
                    q.low ? model_part : torch::Tensor(), q.decay && decay_on});
      if (!q.low) fp32_params.emplace_back(model_part, slot_part(0));
    }
    fused_adamw_(ts, scalars, grad_scale, apply, previous ? &*previous : nullptr);
    for (auto& [dst, src] : fp32_params) dst.copy_(src);  // an FP32 model is its own master: the same bits
    store(s, at, len);
  }
#ifdef QAD_HAS_CUDA
  if (streams_) {
    // Later work on the compute stream (the next update's fetches, a checkpoint's reads) comes after the stores.
    for (size_t s = 0; s < streams_->used.size(); ++s) {
      if (streams_->used[s]) C10_CUDA_CHECK(cudaStreamWaitEvent(compute, streams_->stored[s], 0));
    }
    C10_CUDA_CHECK(cudaEventRecord(streams_->end, compute));
  }
#endif
}

NamedTensors OffloadAdamW::state() const {
  wait_for_copies();
  NamedTensors out;
  for (const auto& q : params_) {
    auto view = [&](const torch::Tensor& h) { return h.narrow(0, q.offset, q.param.numel()).view(q.param.sizes()); };
    if (q.low) out.emplace_back("master." + q.name, view(master_));
    out.emplace_back("exp_avg." + q.name, view(exp_avg_));
    out.emplace_back("exp_avg_sq." + q.name, view(exp_avg_sq_));
  }
  return out;
}

void OffloadAdamW::load_state(const NamedTensors& state, int64_t steps) {
  torch::NoGradGuard ng;
  wait_for_copies();
  const StateByName by_name(state);
  auto take = [&](const std::string& key, const Param& q, const torch::Tensor& host) {
    host.narrow(0, q.offset, q.param.numel()).copy_(by_name.at(key, q.param.sizes()).reshape({-1}));
  };
  for (auto& q : params_) {
    if (q.low) {
      take("master." + q.name, q, master_);
      q.param.copy_(master_.narrow(0, q.offset, q.param.numel()).view(q.param.sizes()));
    } else {
      master_.narrow(0, q.offset, q.param.numel()).copy_(q.param.detach().reshape({-1}));  // the model is the master
    }
    take("exp_avg." + q.name, q, exp_avg_);
    take("exp_avg_sq." + q.name, q, exp_avg_sq_);
  }
  wait_for_copies();
  t_ = steps;
}

}  // namespace qad::train
