// Fully sharded data parallel: units, gathers, reduce-scatters and the layer hooks (see fully_sharded.h).
#include "train/fully_sharded.h"

#include <fmt/format.h>

#include <cctype>
#include <limits>

#include <torch/csrc/autograd/variable.h>

#include "util/error.h"

namespace qad::train {
namespace {

// "model.layers.12.mlp.up_proj.weight" -> 12; -1 for tensors outside the decoder layers (the root unit).
int64_t layer_of(const std::string& name) {
  const std::string key = "layers.";
  size_t at = name.find(key);
  while (at != std::string::npos && at != 0 && name[at - 1] != '.') at = name.find(key, at + 1);
  if (at == std::string::npos) return -1;
  size_t i = at + key.size();
  int64_t v = 0;
  bool digits = false;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) {
    v = v * 10 + (name[i++] - '0');
    digits = true;
  }
  return digits && i < name.size() && name[i] == '.' ? v : -1;
}

// What a released parameter holds: its shape over one element (shape queries still work; no memory).
torch::Tensor placeholder(const torch::Tensor& p) {
  return torch::empty({1}, p.options()).expand(p.sizes());
}

}  // namespace

std::shared_ptr<ShardedModel> ShardedModel::attach(model::CausalLM lm, NamedTensors params,
                                                   dist::Communicator& comm, bool trained) {
  QAD_CHECK(!lm->config().hybrid, "fully sharded training (--zero 3) is not implemented for NemotronH (hybrid) models "
            "yet; use --zero 1");
  QAD_CHECK(!lm->layer_hooks, "fully sharded training: the model already has layer hooks");
  std::shared_ptr<ShardedModel> s(new ShardedModel(lm, std::move(params), comm, trained));
  lm->layer_hooks = s;
  return s;
}

ShardedModel::ShardedModel(const model::CausalLM& lm, NamedTensors params, dist::Communicator& comm, bool trained)
    : lm_(lm.ptr()), params_(std::move(params)), comm_(comm), trained_(trained) {
  torch::NoGradGuard ng;
  QAD_CHECK(!params_.empty(), "fully sharded training: no parameters");
  const auto dtype = params_.front().second.scalar_type();
  const auto device = params_.front().second.device();
  const int64_t layers = lm->config().num_layers;
  unit_of_layer_.assign(static_cast<size_t>(layers), -1);
  units_.emplace_back();
  units_[0].name = "root";
  units_[0].resident = true;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    QAD_CHECK(p.scalar_type() == dtype && p.device() == device, "fully sharded training: '{}' is {} on {}, the other "
              "parameters {} on {}", name, c10::toString(p.scalar_type()), p.device().str(), c10::toString(dtype),
              device.str());
    const int64_t l = layer_of(name);
    QAD_CHECK(l < layers, "fully sharded training: '{}' names layer {}, the model has {}", name, l, layers);
    int u = 0;
    if (l >= 0) {
      if (unit_of_layer_[l] < 0) {
        unit_of_layer_[l] = static_cast<int>(units_.size());
        units_.emplace_back();
        units_.back().name = fmt::format("layers.{}", l);
      }
      u = unit_of_layer_[l];
    }
    units_[u].params.push_back(static_cast<int>(i));
  }
  for (const auto& l : lm->linears()) {
    if (Unit* u = layer_unit(layer_of(l->name() + "."))) u->linears.push_back(l);
  }
  const auto mdtype = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  for (auto& u : units_) {
    std::vector<int64_t> numel;
    for (int i : u.params) numel.push_back(params_[i].second.numel());
    u.layout = dist::plan_flat_layout(numel, std::numeric_limits<int64_t>::max() / 2, comm_.size());
    u.shard = dist::shard_range(u.layout, comm_.rank());
    u.pieces = dist::pieces_in(u.layout, u.shard);
    const auto opts = torch::TensorOptions().dtype(dtype).device(device);
    u.local = torch::zeros({u.shard.size()}, opts);
    for (const auto& pc : u.pieces) {
      const auto& p = params_[u.params[pc.param]].second;
      u.local.narrow(0, pc.flat_begin - u.shard.begin, pc.size)
          .copy_(p.detach().reshape({-1}).narrow(0, pc.param_begin, pc.size));
    }
    if (trained_) u.grad = torch::zeros({u.shard.size()}, opts.dtype(mdtype));
    u.gathered = true;  // the parameters are whole now; the layers give their memory back here
    release(u);
  }
}

ShardedModel::~ShardedModel() { detach(); }

void ShardedModel::detach() {
  if (auto lm = lm_.lock(); lm && lm->layer_hooks.get() == this) lm->layer_hooks.reset();
}

int64_t ShardedModel::local_bytes() const {
  int64_t n = 0;
  for (const auto& u : units_) n += u.local.numel() * static_cast<int64_t>(u.local.element_size());
  return n;
}

ShardedModel::Unit* ShardedModel::layer_unit(int64_t layer) {
  if (layer < 0 || layer >= static_cast<int64_t>(unit_of_layer_.size())) return nullptr;
  const int u = unit_of_layer_[static_cast<size_t>(layer)];
  return u < 0 ? nullptr : &units_[static_cast<size_t>(u)];
}

void ShardedModel::start_gather(Unit& u) {
  if (u.gathered || u.gathering || u.params.empty()) return;
  torch::NoGradGuard ng;
  // A fresh buffer every time (the caching allocator recycles the memory): a gathered buffer is never
  // overwritten while a tensor the forward saved for the backward may still view it.
  u.gather_buffer = torch::empty({u.layout.padded}, u.local.options());
  u.gather_buffer.narrow(0, u.shard.begin, u.shard.size()).copy_(u.local);
  u.gathering = comm_.allgather_async(u.gather_buffer, "parameter all-gather (" + u.name + ")");
}

void ShardedModel::finish_gather(Unit& u) {
  if (u.gathered || u.params.empty()) return;
  start_gather(u);
  comm_.wait(*u.gathering);
  u.gathering.reset();
  for (size_t j = 0; j < u.params.size(); ++j) {
    auto& p = params_[u.params[j]].second;
    p.set_data(u.gather_buffer.narrow(0, u.layout.offset[j], u.layout.numel[j]).view(p.sizes()));
    // Not within a step (the backward's re-gather must leave the versions autograd saved in the forward alone).
    if (u.installed != u.generation) torch::autograd::impl::bump_version(p);
  }
  u.installed = u.generation;
  u.gather_buffer = torch::Tensor();  // the parameters hold it now
  u.gathered = true;
}

void ShardedModel::release(Unit& u) {
  if (!u.gathered || u.resident || pinned_) return;
  for (int i : u.params) {
    auto& p = params_[i].second;
    p.set_data(placeholder(p));
  }
  for (auto& l : u.linears) {
    if (l->quant) l->quant->drop_cached();
  }
  u.gathered = false;
}

void ShardedModel::reduce(Unit& u) {
  torch::NoGradGuard ng;
  if (u.params.empty()) return;
  auto flat = torch::zeros({u.layout.padded}, u.local.options());
  for (size_t j = 0; j < u.params.size(); ++j) {
    auto& p = params_[u.params[j]].second;
    if (!p.grad().defined()) continue;  // no gradient here (an expert no token reached): zeros
    flat.narrow(0, u.layout.offset[j], u.layout.numel[j]).copy_(p.grad().reshape({-1}));
    p.mutable_grad().reset();
  }
  auto shard = torch::empty({u.shard.size()}, u.local.options());
  reductions_.push_back({comm_.reduce_scatter_async(flat, shard, "gradient reduce-scatter (" + u.name + ")"), flat,
                         shard, &u});
  u.reduced = true;
  // One in flight while the next layer's backward runs; older ones are added in (freeing their full buffers).
  while (reductions_.size() > 1) {
    auto& r = reductions_.front();
    comm_.wait(*r.pending);
    r.unit->grad.add_(r.shard.to(r.unit->grad.scalar_type()));
    reductions_.erase(reductions_.begin());
  }
}

void ShardedModel::complete_reductions() {
  torch::NoGradGuard ng;
  for (auto& r : reductions_) {
    comm_.wait(*r.pending);
    r.unit->grad.add_(r.shard.to(r.unit->grad.scalar_type()));
  }
  reductions_.clear();
}

void ShardedModel::before_layer(int64_t layer) {
  if (pinned_) return;
  Unit* u = layer_unit(layer);
  if (u == nullptr) return;
  finish_gather(*u);
  if (Unit* next = layer_unit(layer + 1)) start_gather(*next);  // travels while this layer computes
}

void ShardedModel::after_layer(int64_t layer, const torch::Tensor& input, const torch::Tensor& output) {
  if (pinned_) return;
  Unit* u = layer_unit(layer);
  if (u == nullptr) return;
  if (trained_ && torch::GradMode::is_enabled() && output.requires_grad()) {
    output.register_hook([this, layer](const at::TensorBase&) { backward_reaches_output(layer); });
    if (input.requires_grad()) {
      input.register_hook([this, layer](const at::TensorBase&) { backward_reaches_input(layer); });
    }
  }
  release(*u);
}

void ShardedModel::backward_reaches_output(int64_t layer) {
  Unit* u = layer_unit(layer);
  finish_gather(*u);
  if (Unit* prev = layer_unit(layer - 1)) start_gather(*prev);
}

void ShardedModel::backward_reaches_input(int64_t layer) {
  // The autograd engine runs a leaf's gradient accumulation before any other ready node, so every gradient of
  // this layer is in its parameters' .grad once the gradient of the layer's input is complete.
  Unit* u = layer_unit(layer);
  reduce(*u);
  release(*u);
}

void ShardedModel::finish_backward() {
  if (!trained_) return;
  for (auto& u : units_) {
    if (!u.reduced) reduce(u);  // the same units on every rank: the hooks depend on the graph, not the data
  }
  complete_reductions();
  for (auto& u : units_) {
    for (int i : u.params) {
      QAD_CHECK(!params_[i].second.grad().defined(), "fully sharded training: '{}' received a gradient after its "
                "layer's gradients were reduce-scattered; the backward order is not the one the layer hooks expect",
                params_[i].first);
    }
    if (!u.gathering) release(u);
  }
}

void ShardedModel::refresh() {
  for (auto& u : units_) {
    ++u.generation;
    if (u.gathering) {
      // A prefetch still in flight carries the weights from before the update: let it land (every rank started
      // it) and drop it, so the next gather reads the new shard.
      comm_.wait(*u.gathering);
      u.gathering.reset();
      u.gather_buffer = torch::Tensor();
    }
    if (!u.resident || u.params.empty()) continue;
    u.gathered = false;  // the parameters still hold the old weights until finish_gather replaces them
    finish_gather(u);
  }
}

void ShardedModel::gather_all() {
  for (auto& u : units_) start_gather(u);
  for (auto& u : units_) finish_gather(u);
  pinned_ = true;
}

void ShardedModel::release_all(bool take_back) {
  torch::NoGradGuard ng;
  pinned_ = false;
  for (auto& u : units_) {
    if (take_back && u.gathered) {
      for (const auto& pc : u.pieces) {
        const auto& p = params_[u.params[pc.param]].second;
        u.local.narrow(0, pc.flat_begin - u.shard.begin, pc.size)
            .copy_(p.detach().reshape({-1}).narrow(0, pc.param_begin, pc.size));
      }
      ++u.generation;
      u.installed = u.generation;  // the parameters hold exactly these weights
    }
    release(u);
  }
}

void ShardedModel::zero_grad() {
  for (auto& u : units_) {
    if (u.grad.defined()) u.grad.zero_();
    u.reduced = false;
    for (int i : u.params) params_[i].second.mutable_grad().reset();
  }
}

}  // namespace qad::train
