// AdamW over fully sharded units (see fsdp_adamw.h).
#include "train/fsdp_adamw.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>

#include "util/error.h"
#include "util/torch_format.h"

namespace qad::train {
namespace {

// Slices of this many elements keep the update's FP32 temporaries small (the arithmetic is elementwise).
constexpr int64_t kSliceElements = int64_t{1} << 24;

}  // namespace

FsdpAdamW::FsdpAdamW(std::shared_ptr<ShardedModel> model, const OptimConfig& options)
    : model_(std::move(model)), options_(options) {
  torch::NoGradGuard ng;
  const auto dtype = model_->params().front().second.scalar_type();
  low_ = dtype == torch::kBFloat16 || dtype == torch::kHalf;
  const auto mdtype = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  for (auto& [n, p] : model_->params()) p.set_requires_grad(true);
  for (const auto& u : model_->units()) {
    Shard s;
    s.master = u.local.to(mdtype).clone();  // AdamW: the master starts as the model's weights
    s.exp_avg = torch::zeros_like(s.master);
    s.exp_avg_sq = torch::zeros_like(s.master);
    shards_.push_back(std::move(s));
  }
}

int64_t FsdpAdamW::state_bytes() const {
  int64_t n = 0;
  for (const auto& s : shards_) n += 3 * s.master.numel() * static_cast<int64_t>(s.master.element_size());
  return n;
}

double FsdpAdamW::grad_norm() const {
  torch::NoGradGuard ng;
  auto& comm = model_->comm();
  auto ssq = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat64).device(comm.device()));
  for (const auto& u : model_->units()) {
    for (int64_t at = 0; at < u.grad.numel(); at += kSliceElements) {
      ssq += square_sum_f64(u.grad.narrow(0, at, std::min(kSliceElements, u.grad.numel() - at))).to(comm.device());
    }
  }
  comm.allreduce_sum(ssq, "gradient norm all-reduce");
  return std::sqrt(ssq.item<double>());
}

void FsdpAdamW::scale_grads(double factor) {
  torch::NoGradGuard ng;
  for (auto& u : model_->units()) u.grad.mul_(factor);
}

void FsdpAdamW::zero_grad() { model_->zero_grad(); }

void FsdpAdamW::step(double lr) {
  torch::NoGradGuard ng;
  ++t_;
  const auto& params = model_->params();
  auto& units = model_->units();
  for (size_t k = 0; k < units.size(); ++k) {
    auto& u = units[k];
    auto& s = shards_[k];
    if (options_.weight_decay != 0) {
      for (const auto& pc : u.pieces) {
        if (params[u.params[pc.param]].second.dim() >= 2) {  // AdamW's rule: no decay on norms and biases
          s.master.narrow(0, pc.flat_begin - u.shard.begin, pc.size).mul_(1.0 - lr * options_.weight_decay);
        }
      }
    }
    for (int64_t at = 0; at < s.master.numel(); at += kSliceElements) {
      const int64_t n = std::min(kSliceElements, s.master.numel() - at);
      auto master = s.master.narrow(0, at, n), m = s.exp_avg.narrow(0, at, n), v = s.exp_avg_sq.narrow(0, at, n);
      adam_update_(master, m, v, u.grad.narrow(0, at, n), lr, options_, t_);
    }
    u.local.copy_(s.master);
  }
  model_->refresh();
}

NamedTensors FsdpAdamW::state() const {
  torch::NoGradGuard ng;
  auto& comm = model_->comm();
  const bool root = comm.rank() == 0;
  // Each rank's shard in turn, broadcast and copied to host memory on rank 0 (one shard extra on the device).
  auto gather = [&](const ShardedModel::Unit& u, const torch::Tensor& mine) {
    const int64_t s = u.shard.size();
    torch::Tensor full = root ? torch::empty({u.layout.padded}, mine.options().device(torch::kCPU)) : torch::Tensor();
    for (int q = 0; q < comm.size(); ++q) {
      torch::Tensor buf = q == comm.rank() ? mine.clone() : torch::empty({s}, mine.options());
      if (buf.device() != comm.device()) buf = buf.to(comm.device());
      comm.broadcast(buf, q, "optimizer state gather");
      if (root) full.narrow(0, q * s, s).copy_(buf);
    }
    return full;
  };
  const auto& params = model_->params();
  const auto& units = model_->units();
  std::vector<std::array<torch::Tensor, 3>> per_param(params.size());
  for (size_t k = 0; k < units.size(); ++k) {
    const auto& u = units[k];
    const auto master = gather(u, shards_[k].master), m = gather(u, shards_[k].exp_avg),
               v = gather(u, shards_[k].exp_avg_sq);
    if (!root) continue;
    for (size_t j = 0; j < u.params.size(); ++j) {
      const auto& p = params[u.params[j]].second;
      auto piece = [&](const torch::Tensor& full) {
        return full.narrow(0, u.layout.offset[j], u.layout.numel[j]).view(p.sizes()).clone();
      };
      per_param[u.params[j]] = {piece(master), piece(m), piece(v)};
    }
  }
  NamedTensors out;
  if (!root) return out;
  for (size_t i = 0; i < params.size(); ++i) {  // AdamW's order and names
    const auto& name = params[i].first;
    if (low_) out.emplace_back("master." + name, per_param[i][0]);
    out.emplace_back("exp_avg." + name, per_param[i][1]);
    out.emplace_back("exp_avg_sq." + name, per_param[i][2]);
  }
  return out;
}

void FsdpAdamW::load_state(const NamedTensors& state, int64_t steps) {
  torch::NoGradGuard ng;
  const StateByName by_name(state);
  auto find = [&](const std::string& key, const torch::Tensor& like) -> const torch::Tensor& {
    return by_name.at(key, like.sizes());
  };
  const auto& params = model_->params();
  const auto& units = model_->units();
  for (const auto& [name, p] : params) {  // every tensor present, not only this rank's pieces
    if (low_) (void)find("master." + name, p);
    (void)find("exp_avg." + name, p);
    (void)find("exp_avg_sq." + name, p);
  }
  for (size_t k = 0; k < units.size(); ++k) {
    const auto& u = units[k];
    auto& s = shards_[k];
    for (const auto& pc : u.pieces) {
      const auto& [name, p] = params[u.params[pc.param]];
      auto put = [&](torch::Tensor& dst, const torch::Tensor& src) {
        dst.narrow(0, pc.flat_begin - u.shard.begin, pc.size)
            .copy_(src.reshape({-1}).narrow(0, pc.param_begin, pc.size));
      };
      put(s.master, low_ ? find("master." + name, p) : p.detach());
      put(s.exp_avg, find("exp_avg." + name, p));
      put(s.exp_avg_sq, find("exp_avg_sq." + name, p));
    }
  }
  t_ = steps;
}

}  // namespace qad::train
