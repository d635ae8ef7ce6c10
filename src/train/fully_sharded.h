// Fully sharded data parallel (ZeRO-3 / FSDP style) for one model: its parameters are cut into units (one per
// decoder layer, plus a "root" unit of everything else: embeddings, final norm, lm_head), each laid out flat
// (dist/flat_layout.h) and split into world_size equal shards. Rank r keeps only its shard of each unit
// (`local`, the compute dtype) and, for the trained student, the unit's reduce-scattered gradient shard; the
// FP32 master and AdamW moments of the same range live in FsdpAdamW (train/fsdp_adamw.h).
//
// Between uses a layer's parameters keep their shapes but hold one element (a stride-0 view: shape queries
// work, values are meaningless). As LayerHooks of the model (model/causal_lm.h) it all-gathers layer l just
// before it runs (waiting for the prefetch started at layer l - 1, and prefetching l + 1), releases it after,
// and, when the forward records a graph, hooks the backward: the gradient reaching the layer's output gathers
// it again (prefetching l - 1) and the gradient reaching its input - the layer's backward is then complete -
// reduce-scatters its gradients into the shard and frees them. The root unit stays gathered (it is used
// before the first layer and after the last, and the embedding may be tied to lm_head); its gradients are
// reduce-scattered at the end of the step. Gathered buffers are fresh tensors, never overwritten, so tensors
// autograd saved in the forward stay valid. docs/dist.md.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/flat_layout.h"
#include "model/causal_lm.h"
#include "train/optimizer.h"

namespace qad::train {

class ShardedModel : public model::LayerHooks {
 public:
  struct Unit {
    std::string name;             // "root" or "layers.N"
    std::vector<int> params;      // indexes into params()
    dist::FlatLayout layout;      // the unit's parameters, flat, padded to world_size equal shards
    dist::Range shard;            // this rank's range of the layout
    std::vector<dist::Piece> pieces;
    torch::Tensor local;          // [shard] compute dtype: this rank's part of the weights
    torch::Tensor grad;           // [shard] master dtype: the step's summed gradient (trained models only)
    bool resident = false;        // the root: always gathered
    bool gathered = false;
    std::shared_ptr<dist::Communicator::Pending> gathering;  // a prefetch in flight
    torch::Tensor gather_buffer;
    bool reduced = false;         // in this step's last backward
    // How often `local` changed, and which of those the parameters hold: a gather of new weights bumps the
    // parameters' version counters (set_data does not), so caches keyed on them (NvFp4LinearQuant's quantized
    // weight) see the change even where the allocator hands out the same address again.
    int64_t generation = 0, installed = 0;
    std::vector<model::Linear> linears;  // the unit's Linears: their quantization caches are dropped on release
  };

  // Shards `params` (the model's tensors by HF name, full on every rank) and installs itself as the model's
  // layer hooks. trained: gradients are reduce-scattered (the student); otherwise forward only (the teacher).
  static std::shared_ptr<ShardedModel> attach(model::CausalLM lm, NamedTensors params,
                                              dist::Communicator& comm, bool trained);
  ~ShardedModel() override;
  ShardedModel(const ShardedModel&) = delete;
  ShardedModel& operator=(const ShardedModel&) = delete;
  void detach();  // removes the hooks from the model

  void before_layer(int64_t layer) override;
  void after_layer(int64_t layer, const torch::Tensor& input, const torch::Tensor& output) override;

  // After the step's backward passes: reduce-scatters the units the backward hooks did not (the root; any layer
  // whose input needs no gradient) and waits for all gradient traffic.
  void finish_backward();
  // The weights changed (the optimizer wrote every unit's `local`): the root is gathered again.
  void refresh();
  // Every unit gathered and kept (validation, checkpoints, loading weights: code that reads whole tensors) ...
  void gather_all();
  // ... and released again; with take_back, each unit's `local` is first taken from the (maybe rewritten) params.
  void release_all(bool take_back);
  void zero_grad();

  std::vector<Unit>& units() { return units_; }
  const std::vector<Unit>& units() const { return units_; }
  const NamedTensors& params() const { return params_; }
  dist::Communicator& comm() { return comm_; }
  int64_t local_bytes() const;  // this rank's weight shards (for tests and the log)

 private:
  ShardedModel(const model::CausalLM& lm, NamedTensors params, dist::Communicator& comm, bool trained);
  void backward_reaches_output(int64_t layer);  // the layer's backward is next: gather it
  void backward_reaches_input(int64_t layer);   // the layer's backward is done: reduce-scatter its gradients
  void start_gather(Unit& u);
  void finish_gather(Unit& u);
  void release(Unit& u);
  void reduce(Unit& u);
  void complete_reductions();
  Unit* layer_unit(int64_t layer);  // null where the layer has no sharded parameters

  std::weak_ptr<model::CausalLMImpl> lm_;  // (weak: the model holds this object as its hooks)
  NamedTensors params_;
  dist::Communicator& comm_;
  bool trained_;
  bool pinned_ = false;  // gather_all: the hooks neither gather nor release
  std::vector<Unit> units_;              // [0] root, then the layers that have parameters here
  std::vector<int> unit_of_layer_;       // layer -> unit index, -1 where none
  struct Reduction {
    std::shared_ptr<dist::Communicator::Pending> pending;
    torch::Tensor flat, shard;
    Unit* unit = nullptr;
  };
  std::vector<Reduction> reductions_;  // in flight
};

}  // namespace qad::train
