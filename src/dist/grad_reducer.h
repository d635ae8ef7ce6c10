// Bucketed gradient all-reduce overlapped with the backward pass. Every parameter's .grad is a view of one
// flat buffer laid out by FlatLayout (so accumulation over micro-batches writes straight into the buckets);
// during the last micro-batch's backward a post-hook on each parameter's gradient accumulator counts it in,
// and a bucket is all-reduced (asynchronously, buckets strictly in order on every rank) as soon as all its
// parameters' gradients are complete. finish() waits for all of them before the gradient norm.
//
// How many times each accumulator fires per backward is learned in the first step (which therefore launches
// all buckets at the end): a weight used twice (tied, or inside a recomputed checkpoint) is only counted
// complete after its last firing.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <mutex>
#include <vector>

#include "dist/communicator.h"
#include "dist/flat_layout.h"

namespace qad::dist {

class GradReducer {
 public:
  // params: all of the same dtype and device. bucket_bytes: the size at which a bucket is closed.
  GradReducer(std::vector<torch::Tensor> params, int64_t bucket_bytes, Communicator& comm);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Start of a step: zero the buffer and make every parameter's .grad a view of it.
  void attach_grads();
  // Before the last micro-batch's backward: buckets are all-reduced as their gradients complete.
  void arm();
  // After it: start the buckets not started yet (in order) and wait for all. The buffer then holds the sum
  // over ranks.
  void finish();

  torch::Tensor flat() const { return flat_; }
  const FlatLayout& layout() const { return layout_; }
  const std::vector<torch::Tensor>& params() const { return params_; }
  int buckets_launched_early() const { return early_; }  // in the last step: before finish() (for tests)

 private:
  struct Hook;
  void on_grad_ready(int param);
  void launch_ready_buckets(bool all);

  std::vector<torch::Tensor> params_;
  FlatLayout layout_;
  Communicator& comm_;
  torch::Tensor flat_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // keeps the hooks' owners alive
  std::vector<uintptr_t> hook_keys_;

  std::mutex mu_;
  bool armed_ = false, learned_ = false;
  std::vector<int> fired_, expected_;   // per parameter, in this backward / learned
  std::vector<int> bucket_pending_;     // per bucket: parameters not complete yet
  size_t next_bucket_ = 0;
  int early_ = 0;
};

}  // namespace qad::dist
