// CUDA graphs for the decode step: one graph per key (the attention span bucket), recorded the second time
// a key is seen (the first run is eager and warms kernels and workspaces) and replayed after that. The step
// must be pure device work on tensors whose storage stays put (static inputs, in-place outputs). Without
// CUDA, or on CPU, or when a recording fails (an op that syncs with the host, e.g. in a quantization hook),
// every step runs eagerly.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace qad::model {

class DecodeGraphs {
 public:
  explicit DecodeGraphs(bool enabled);
  ~DecodeGraphs();
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;

  void run(int64_t key, const std::function<void()>& step);
  // Drops every graph (the tensors they read were reallocated).
  void clear();
  int64_t replays() const { return replays_; }
  int64_t recorded() const { return recorded_; }
  const std::string& failure() const { return failure_; }  // why graphs were switched off, if they were

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t replays_ = 0, recorded_ = 0;
  std::string failure_;
};

}  // namespace qad::model
