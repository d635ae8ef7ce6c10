// Bucketed, overlapped gradient all-reduce (see grad_reducer.h).
#include "dist/grad_reducer.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "util/error.h"

namespace qad::dist {

struct GradReducer::Hook : torch::autograd::FunctionPostHook {
  GradReducer* owner;
  int param;
  Hook(GradReducer* o, int p) : owner(o), param(p) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    owner->on_grad_ready(param);
    return outputs;
  }
};

GradReducer::GradReducer(std::vector<torch::Tensor> params, int64_t bucket_bytes, Communicator& comm)
    : params_(std::move(params)), comm_(comm) {
  QAD_CHECK(!params_.empty(), "data parallel: no parameters to reduce");
  const auto dtype = params_[0].scalar_type();
  const auto device = params_[0].device();
  std::vector<int64_t> numel;
  for (const auto& p : params_) {
    QAD_CHECK(p.scalar_type() == dtype && p.device() == device, "data parallel: parameters of mixed dtype or device "
              "({} on {} vs {} on {})", c10::toString(p.scalar_type()), p.device().str(), c10::toString(dtype),
              device.str());
    numel.push_back(p.numel());
  }
  const int64_t esize = static_cast<int64_t>(c10::elementSize(dtype));
  layout_ = plan_flat_layout(numel, std::max<int64_t>(bucket_bytes / esize, 1), comm.size());
  flat_ = torch::zeros({layout_.padded}, params_[0].options().requires_grad(false));
  fired_.assign(params_.size(), 0);
  expected_.assign(params_.size(), 0);
  for (size_t i = 0; i < params_.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[i]);
    QAD_CHECK(acc != nullptr, "data parallel: parameter {} is not a leaf that requires grad", i);
    hook_keys_.push_back(acc->add_post_hook(std::make_unique<Hook>(this, static_cast<int>(i))));
    accumulators_.push_back(std::move(acc));
  }
}

GradReducer::~GradReducer() {
  for (size_t i = 0; i < accumulators_.size(); ++i) accumulators_[i]->del_post_hook(hook_keys_[i]);
}

void GradReducer::attach_grads() {
  torch::NoGradGuard ng;
  flat_.zero_();
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].mutable_grad() = flat_.narrow(0, layout_.offset[i], layout_.numel[i]).view(params_[i].sizes());
  }
}

void GradReducer::arm() {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = true;
  std::fill(fired_.begin(), fired_.end(), 0);
  bucket_pending_.assign(layout_.buckets.size(), 0);
  next_bucket_ = 0;
  early_ = 0;
  if (learned_) {
    for (size_t b = 0; b < layout_.buckets.size(); ++b) {
      for (int p : layout_.buckets[b].params) bucket_pending_[b] += expected_[p] > 0 ? 1 : 0;
    }
    launch_ready_buckets(false);  // buckets whose parameters get no gradient
  }
}

void GradReducer::on_grad_ready(int p) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_) return;
  ++fired_[p];
  if (!learned_ || fired_[p] != expected_[p]) return;
  const int b = layout_.bucket_of[p];
  if (--bucket_pending_[b] == 0) launch_ready_buckets(false);
}

void GradReducer::launch_ready_buckets(bool all) {
  while (next_bucket_ < layout_.buckets.size() && (all || bucket_pending_[next_bucket_] == 0)) {
    const auto& b = layout_.buckets[next_bucket_];
    comm_.allreduce_async(flat_.narrow(0, b.begin, b.end - b.begin));
    if (!all) ++early_;
    ++next_bucket_;
  }
}

void GradReducer::finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    QAD_CHECK(armed_, "GradReducer::finish without arm");
    if (!learned_) {
      expected_ = fired_;
      learned_ = true;
    } else {
      for (size_t i = 0; i < params_.size(); ++i) {
        QAD_CHECK(fired_[i] == expected_[i], "data parallel: parameter {} received {} gradient(s) in this backward and "
                  "{} in the first; the graph must be the same every step", i, fired_[i], expected_[i]);
      }
    }
    launch_ready_buckets(true);
    armed_ = false;
  }
  comm_.wait_all("gradient all-reduce");
}

}  // namespace qad::dist
