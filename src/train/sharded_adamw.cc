// ZeRO-1 AdamW (see sharded_adamw.h).
#include "train/sharded_adamw.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "util/error.h"
#include "util/torch_format.h"

namespace qad::train {
namespace {

// The shard is updated in slices of this many elements so that the FP32 temporaries (the gradient in the
// master dtype, the denominator) stay small next to the sharded state; the arithmetic is elementwise, so
// slicing changes no result.
constexpr int64_t kSliceElements = int64_t{1} << 24;

}  // namespace

ShardedAdamW::ShardedAdamW(NamedTensors params, const OptimConfig& options, dist::Communicator& comm,
                           dist::GradReducer& reducer)
    : params_(std::move(params)), options_(options), comm_(comm), reducer_(reducer) {
  torch::NoGradGuard ng;
  QAD_CHECK(params_.size() == reducer_.params().size(), "ShardedAdamW: {} parameters, the reducer has {}",
            params_.size(), reducer_.params().size());
  for (size_t i = 0; i < params_.size(); ++i) {
    QAD_CHECK(params_[i].second.is_same(reducer_.params()[i]), "ShardedAdamW: parameter {} ('{}') is not the "
              "reducer's", i, params_[i].first);
    const auto st = params_[i].second.scalar_type();
    low_.push_back(st == torch::kBFloat16 || st == torch::kHalf);
  }
  const auto& layout = reducer_.layout();
  shard_ = dist::shard_range(layout, comm_.rank());
  pieces_ = dist::pieces_in(layout, shard_);
  const auto pdtype = params_.front().second.scalar_type();
  const auto mdtype = pdtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const auto opts = params_.front().second.options().dtype(mdtype).requires_grad(false);
  master_ = torch::zeros({shard_.size()}, opts);
  exp_avg_ = torch::zeros({shard_.size()}, opts);
  exp_avg_sq_ = torch::zeros({shard_.size()}, opts);
  for (const auto& pc : pieces_) {
    const auto& p = params_[pc.param].second;
    master_.narrow(0, pc.flat_begin - shard_.begin, pc.size).copy_(p.detach().reshape({-1}).narrow(0, pc.param_begin, pc.size));
  }
}

int64_t ShardedAdamW::state_bytes() const {
  return 3 * master_.numel() * static_cast<int64_t>(master_.element_size());
}

torch::Tensor ShardedAdamW::grad_shard() const { return reducer_.flat().narrow(0, shard_.begin, shard_.size()); }

double ShardedAdamW::grad_norm() const {
  torch::NoGradGuard ng;
  // Squares summed like AdamW::grad_norm's (square_sum_f64), then across slices and shards in FP64.
  const auto g = grad_shard();
  auto ssq = torch::zeros({1}, g.options().dtype(torch::kFloat64));
  for (int64_t at = 0; at < g.numel(); at += kSliceElements) {
    ssq += square_sum_f64(g.narrow(0, at, std::min(kSliceElements, g.numel() - at)));
  }
  if (comm_.device() != ssq.device()) ssq = ssq.to(comm_.device());
  comm_.allreduce_sum(ssq, "gradient norm all-reduce");
  return std::sqrt(ssq.item<double>());
}

void ShardedAdamW::scale_grads(double factor) {
  torch::NoGradGuard ng;
  grad_shard().mul_(factor);
}

void ShardedAdamW::zero_grad() {
  for (auto& [n, p] : params_) p.mutable_grad().reset();
}

void ShardedAdamW::step(double lr) {
  torch::NoGradGuard ng;
  ++t_;
  auto flat_shard = grad_shard();
  if (options_.weight_decay != 0) {
    for (const auto& pc : pieces_) {
      if (params_[pc.param].second.dim() >= 2) {  // AdamW's rule: no decay on norms and biases
        master_.narrow(0, pc.flat_begin - shard_.begin, pc.size).mul_(1.0 - lr * options_.weight_decay);
      }
    }
  }
  for (int64_t at = 0; at < master_.numel(); at += kSliceElements) {
    const int64_t n = std::min(kSliceElements, master_.numel() - at);
    auto master = master_.narrow(0, at, n), m = exp_avg_.narrow(0, at, n), v = exp_avg_sq_.narrow(0, at, n);
    adam_update_(master, m, v, flat_shard.narrow(0, at, n).to(master_.scalar_type()), lr, options_, t_);
  }
  // The gradients are spent: the buffer now carries the updated weights to every rank.
  flat_shard.copy_(master_);
  auto flat = reducer_.flat();
  comm_.allgather_in_place(flat, "parameter all-gather");
  const auto& layout = reducer_.layout();
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    p.copy_(flat.narrow(0, layout.offset[i], layout.numel[i]).view(p.sizes()));
  }
}

NamedTensors ShardedAdamW::state() const {
  torch::NoGradGuard ng;
  const bool root = comm_.rank() == 0;
  const auto& layout = reducer_.layout();
  const int64_t s = layout.shard_size();
  auto gather = [&](const torch::Tensor& mine) {
    // Each rank's shard in turn, broadcast and copied to host memory on rank 0: the device holds one shard
    // extra at a time.
    torch::Tensor full = root ? torch::empty({layout.padded}, mine.options().device(torch::kCPU)) : torch::Tensor();
    for (int q = 0; q < comm_.size(); ++q) {
      torch::Tensor buf = q == comm_.rank() ? mine.clone() : torch::empty({s}, mine.options());
      if (buf.device() != comm_.device()) buf = buf.to(comm_.device());
      comm_.broadcast(buf, q, "optimizer state gather");
      if (root) full.narrow(0, q * s, s).copy_(buf);
    }
    return full;
  };
  const auto master = gather(master_), m = gather(exp_avg_), v = gather(exp_avg_sq_);
  NamedTensors out;
  if (!root) return out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    auto piece = [&](const torch::Tensor& full) {
      return full.narrow(0, layout.offset[i], layout.numel[i]).view(p.sizes()).clone();
    };
    if (low_[i]) out.emplace_back("master." + name, piece(master));
    out.emplace_back("exp_avg." + name, piece(m));
    out.emplace_back("exp_avg_sq." + name, piece(v));
  }
  return out;
}

void ShardedAdamW::load_state(const NamedTensors& state, int64_t steps) {
  torch::NoGradGuard ng;
  const StateByName by_name(state);
  auto find = [&](const std::string& key, const torch::Tensor& like) -> const torch::Tensor& {
    return by_name.at(key, like.sizes());
  };
  for (const auto& pc : pieces_) {
    const auto& [name, p] = params_[pc.param];
    auto put = [&](torch::Tensor& dst, const torch::Tensor& src) {
      dst.narrow(0, pc.flat_begin - shard_.begin, pc.size)
          .copy_(src.reshape({-1}).narrow(0, pc.param_begin, pc.size));
    };
    put(master_, low_[pc.param] ? find("master." + name, p) : p.detach());
    put(exp_avg_, find("exp_avg." + name, p));
    put(exp_avg_sq_, find("exp_avg_sq." + name, p));
  }
  // Every rank read the same checkpoint, so the model's (compute-dtype) weights already agree.
  for (size_t i = 0; i < params_.size(); ++i) {
    if (low_[i]) (void)find("master." + params_[i].first, params_[i].second);
  }
  t_ = steps;
}

}  // namespace qad::train
