// A device-to-host copy that the host waits for later: a step's values land in pinned host memory while the device
// goes on with the work queued after them (the next step), and the host blocks only when it asks for them. On the
// CPU the copy is made at once.
#pragma once
#include <torch/torch.h>

#include <memory>

namespace qad::train {

class PendingRead {
 public:
  PendingRead() = default;
  // Queues the copy of `values` (any device) on the current stream, after everything queued so far.
  explicit PendingRead(const torch::Tensor& values);
  bool empty() const { return !host_.defined(); }
  // The values on the host once the copy has landed (waits for the device up to the copy, not beyond it).
  const torch::Tensor& wait();

 private:
  torch::Tensor host_;
  std::shared_ptr<void> landed_;  // the CUDA event recorded after the copy; null on the CPU
};

}  // namespace qad::train
