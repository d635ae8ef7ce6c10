// The continuous-batching loop (batched_generate.h): admit -> prefill -> decode steps -> every check_every
// steps one look at the finished flags -> collect and refill; when no prompt waits and at most half the
// slots are busy, the cache shrinks to the busy ones.
#include "model/batched_generate.h"
#include "model/hybrid_generate.h"

#include <algorithm>
#include <memory>
#include <optional>

#include "model/decode_graph.h"
#include "model/device_memory.h"
#include "model/slot_kv_cache.h"
#include "util/error.h"

namespace qad::model {
namespace {

constexpr int64_t kSpanBucket = 32;    // attention spans round up to this, so shapes repeat across steps
constexpr int64_t kCpuSlots = 64;      // CPU: enough rows for the BLAS, little memory
constexpr int64_t kMaxSlots = 1024;

// One engine run: the device state of every slot and the host's view of it.
class Engine {
 public:
  Engine(CausalLM& lm, const std::vector<GenerationRequest>& requests, const BatchedGenerateOptions& o,
         GenerateStats& stats)
      : lm_(lm), requests_(requests), o_(o), stats_(stats), outputs_(requests.size()) {
    const auto& w = lm->model->embed_tokens->weight;
    device_ = w.device();
    int64_t longest = 0;
    for (const auto& r : requests) longest = std::max<int64_t>(longest, static_cast<int64_t>(r.prompt.size()));
    // A finished sequence may decode check_every - 1 more steps before the host sees it (positions clamp
    // at the end anyway, the extra room only keeps its stale writes away from real positions).
    capacity_ = longest + o.max_new_tokens + o.check_every;
    slots_ = plan_slots(lm->config(), device_, w.scalar_type(), static_cast<int64_t>(requests.size()), capacity_, o);
    cache_.emplace(lm->config(), slots_, capacity_, device_, w.scalar_type());
    graphs_ = std::make_unique<DecodeGraphs>(o.cuda_graphs && device_.is_cuda());
    auto lo = torch::TensorOptions().device(device_).dtype(torch::kLong);
    cur_ = torch::zeros({slots_}, lo);
    pos_ = torch::zeros({slots_}, lo);
    ngen_ = torch::zeros({slots_}, lo);
    keys_ = torch::zeros({slots_}, lo);
    out_ = torch::zeros({slots_, o.max_new_tokens}, lo);
    done_ = torch::ones({slots_}, lo.dtype(torch::kBool));
    nonfinite_ = torch::zeros({}, lo.dtype(torch::kBool));
    if (!o.stop_ids.empty()) stop_ = torch::tensor(o.stop_ids, torch::kLong).to(device_);
    slot_request_.assign(static_cast<size_t>(slots_), -1);
    host_pos_.assign(static_cast<size_t>(slots_), 0);
    stats_.slots = slots_;
    stats_.capacity = capacity_;
    stats_.kv_cache_gb = static_cast<double>(slots_ * capacity_ * SlotKVCache::bytes_per_token(lm->config(), w.scalar_type())) / 1e9;
  }

  std::vector<GenerationOutput> run() {
    admit(free_slots());
    int64_t since_check = 0;
    while (finished_ < static_cast<int64_t>(requests_.size())) {
      decode_step();
      if (++since_check < o_.check_every) continue;
      since_check = 0;
      collect();
      if (next_ < requests_.size()) {
        admit(free_slots());
      } else {
        maybe_compact();
      }
    }
    return std::move(outputs_);
  }

 private:
  torch::Tensor is_stop(const torch::Tensor& tokens) const {
    if (!stop_.defined()) return torch::zeros_like(tokens, tokens.options().dtype(torch::kBool));
    return (tokens.unsqueeze(1) == stop_.unsqueeze(0)).any(1);
  }

  std::vector<int64_t> free_slots() const {
    std::vector<int64_t> f;
    for (int64_t s = 0; s < slots_; ++s) {
      if (slot_request_[static_cast<size_t>(s)] < 0) f.push_back(s);
    }
    return f;
  }

  // Waiting prompts into `free` slots, prefilled in groups of at most prefill_tokens padded tokens.
  void admit(const std::vector<int64_t>& free) {
    size_t f = 0;
    while (f < free.size() && next_ < requests_.size()) {
      std::vector<size_t> group;
      std::vector<int64_t> slots;
      int64_t t = 0;
      while (f < free.size() && next_ < requests_.size()) {
        const auto len = static_cast<int64_t>(requests_[next_].prompt.size());
        const int64_t t2 = std::max(t, len);
        if (!group.empty() && t2 * static_cast<int64_t>(group.size() + 1) > o_.prefill_tokens) break;
        t = t2;
        group.push_back(next_++);
        slots.push_back(free[f++]);
      }
      prefill(group, slots, t);
    }
  }

  void prefill(const std::vector<size_t>& group, const std::vector<int64_t>& slots, int64_t t) {
    const auto n = static_cast<int64_t>(group.size());
    auto ids = torch::zeros({n, t}, torch::kLong);  // right padding: causal attention never reads it
    auto acc = ids.accessor<int64_t, 2>();
    std::vector<int64_t> last(group.size()), lens(group.size()), keys(group.size());
    for (size_t i = 0; i < group.size(); ++i) {
      const auto& r = requests_[group[i]];
      for (size_t j = 0; j < r.prompt.size(); ++j) acc[static_cast<int64_t>(i)][static_cast<int64_t>(j)] = r.prompt[j];
      lens[i] = static_cast<int64_t>(r.prompt.size());
      last[i] = lens[i] - 1;
      keys[i] = static_cast<int64_t>(stream_key(o_.sampling.seed, r.item, r.sample));
      slot_request_[static_cast<size_t>(slots[i])] = static_cast<int64_t>(group[i]);
      host_pos_[static_cast<size_t>(slots[i])] = lens[i];
    }
    auto lo = torch::TensorOptions().device(device_).dtype(torch::kLong);
    auto slots_t = torch::tensor(slots, torch::kLong).to(device_);
    cache_->begin_prefill(slots_t);
    ForwardOptions fo;
    fo.kv_store = &*cache_;
    fo.position_ids = torch::arange(t, lo).unsqueeze(0).expand({n, t});
    fo.logits_positions = torch::tensor(last, torch::kLong).to(device_);
    fo.attention = o_.attention;
    auto logits = lm_->forward(ids.to(device_), fo).logits.select(1, 0);
    auto keys_t = torch::tensor(keys, torch::kLong).to(device_);
    // NaN/Inf logits would pick token 0 forever (greedy) or fail in sampling: flagged on the device, read at collect().
    nonfinite_.logical_or_(torch::isfinite(logits).all().logical_not());
    auto first = select_tokens(logits, o_.sampling, keys_t, torch::zeros({n}, lo));
    cur_.index_put_({slots_t}, first);
    pos_.index_put_({slots_t}, torch::tensor(lens, torch::kLong).to(device_));
    ngen_.index_put_({slots_t}, torch::ones({n}, lo));
    keys_.index_put_({slots_t}, keys_t);
    out_.select(1, 0).index_put_({slots_t}, first);
    done_.index_put_({slots_t}, o_.max_new_tokens == 1 ? torch::ones({n}, lo.dtype(torch::kBool)) : is_stop(first));
    ++stats_.prefill_forwards;
  }

  void decode_step() {
    int64_t longest = 0;
    for (int64_t s = 0; s < slots_; ++s) {
      if (slot_request_[static_cast<size_t>(s)] >= 0) longest = std::max(longest, host_pos_[static_cast<size_t>(s)]);
    }
    const int64_t span = std::min(capacity_, (longest + 1 + kSpanBucket - 1) / kSpanBucket * kSpanBucket);
    // Device work only, in place on the slot tensors: a CUDA graph can record and replay it.
    graphs_->run(span, [this, span] {
      auto lo = torch::TensorOptions().device(device_).dtype(torch::kLong);
      ForwardOptions fo;
      fo.kv_store = &*cache_;
      fo.position_ids = pos_.view({slots_, 1});
      // Slot s sees its cached positions 0..pos[s] (pos[s] is the token written now) and nothing else.
      fo.attention_keep = torch::arange(span, lo).view({1, 1, 1, span}) <= pos_.view({slots_, 1, 1, 1});
      fo.attention = o_.attention;
      cache_->begin_decode(pos_, span);
      auto logits = lm_->forward(cur_.view({slots_, 1}), fo).logits.select(1, 0);
      auto next = select_tokens(logits, o_.sampling, keys_, ngen_);
      auto active = done_.logical_not();
      nonfinite_.logical_or_(torch::isfinite(logits).all(-1).logical_not().logical_and(active).any());
      auto at = ngen_.clamp_max(o_.max_new_tokens - 1).unsqueeze(1);
      out_.scatter_(1, at, torch::where(active, next, out_.gather(1, at).squeeze(1)).unsqueeze(1));
      ngen_.add_(active.to(torch::kLong));
      done_.logical_or_(active.logical_and(is_stop(next).logical_or(ngen_ >= o_.max_new_tokens)));
      cur_.copy_(next);
      pos_.add_(1).clamp_max_(capacity_ - 1);
    });
    for (auto& p : host_pos_) p = std::min(p + 1, capacity_ - 1);
    ++stats_.decode_steps;
    stats_.graph_replays = graphs_->replays();
    stats_.graph_failure = graphs_->failure();
  }

  // The one host sync of a check: finished flags and counts; then the finished rows' tokens.
  void collect() {
    auto flags = torch::stack({done_.to(torch::kLong), ngen_}).cpu();
    QAD_CHECK(!nonfinite_.item<bool>(), "generate: the model's logits hold NaN or Inf values; its weights or activations "
              "overflow ({}); check the checkpoint with qad eval", c10::toString(lm_->lm_head->weight.scalar_type()));
    auto fa = flags.accessor<int64_t, 2>();
    std::vector<int64_t> finished;
    for (int64_t s = 0; s < slots_; ++s) {
      if (slot_request_[static_cast<size_t>(s)] >= 0 && fa[0][s] != 0) finished.push_back(s);
    }
    if (finished.empty()) return;
    auto rows = out_.index_select(0, torch::tensor(finished, torch::kLong).to(device_)).cpu();
    auto ra = rows.accessor<int64_t, 2>();
    for (size_t k = 0; k < finished.size(); ++k) {
      const auto s = finished[k];
      auto& out = outputs_[static_cast<size_t>(slot_request_[static_cast<size_t>(s)])];
      const int64_t n = fa[1][s];
      for (int64_t j = 0; j < n; ++j) out.new_ids.push_back(ra[static_cast<int64_t>(k)][j]);
      out.stopped = n > 0 && std::find(o_.stop_ids.begin(), o_.stop_ids.end(), out.new_ids.back()) != o_.stop_ids.end();
      slot_request_[static_cast<size_t>(s)] = -1;
      ++finished_;
    }
    if (o_.on_progress) o_.on_progress(finished_, static_cast<int64_t>(requests_.size()));
  }

  // No prompt waits: drop idle slots once at most half are busy, so the tail decodes a smaller batch.
  void maybe_compact() {
    std::vector<int64_t> busy;
    for (int64_t s = 0; s < slots_; ++s) {
      if (slot_request_[static_cast<size_t>(s)] >= 0) busy.push_back(s);
    }
    if (busy.empty() || static_cast<int64_t>(busy.size()) * 2 > slots_) return;
    auto keep = torch::tensor(busy, torch::kLong).to(device_);
    cache_->select_slots(keep);
    for (auto* t : {&cur_, &pos_, &ngen_, &keys_, &out_, &done_}) *t = t->index_select(0, keep);
    std::vector<int64_t> req, pos;
    for (auto s : busy) {
      req.push_back(slot_request_[static_cast<size_t>(s)]);
      pos.push_back(host_pos_[static_cast<size_t>(s)]);
    }
    slot_request_ = std::move(req);
    host_pos_ = std::move(pos);
    slots_ = static_cast<int64_t>(busy.size());
    graphs_->clear();  // they read the old tensors
    ++stats_.compactions;
  }

  CausalLM& lm_;
  const std::vector<GenerationRequest>& requests_;
  const BatchedGenerateOptions& o_;
  GenerateStats& stats_;
  std::vector<GenerationOutput> outputs_;
  torch::Device device_{torch::kCPU};
  int64_t capacity_ = 0, slots_ = 0, finished_ = 0;
  size_t next_ = 0;
  std::optional<SlotKVCache> cache_;
  std::unique_ptr<DecodeGraphs> graphs_;
  torch::Tensor cur_, pos_, ngen_, keys_, out_, done_, stop_;
  torch::Tensor nonfinite_;  // 0-dim bool: some active row's logits were NaN/Inf
  std::vector<int64_t> slot_request_, host_pos_;  // per slot: the request it holds (-1: free), its position
};

}  // namespace

int64_t plan_slots(const ModelConfig& c, torch::Device device, torch::ScalarType dtype, int64_t requests,
                   int64_t tokens_per_sequence, const BatchedGenerateOptions& o) {
  if (o.max_slots > 0) return std::min(o.max_slots, requests);
  const auto free = free_device_bytes(device);
  if (!free) return std::min(kCpuSlots, requests);
  // Per slot: its KV rows, its output row, and the sampler's FP32/FP64 copies of one logits row.
  const double per_slot = static_cast<double>(SlotKVCache::bytes_per_token(c, dtype) * tokens_per_sequence) +
                          8.0 * 2 * static_cast<double>(o.max_new_tokens) + 32.0 * static_cast<double>(c.vocab_size);
  const auto fit = static_cast<int64_t>(o.kv_memory_fraction * static_cast<double>(*free) / per_slot);
  QAD_CHECK(fit >= 1, "generation: one sequence of {} tokens needs {:.2f} GB of KV cache, {:.2f} GB is free; lower "
            "--max-new-tokens", tokens_per_sequence, per_slot / 1e9, static_cast<double>(*free) / 1e9);
  return std::min({fit, requests, kMaxSlots});
}

std::vector<GenerationOutput> generate_batched(CausalLM& lm, const std::vector<GenerationRequest>& requests,
                                               const BatchedGenerateOptions& o, GenerateStats* stats) {
  QAD_CHECK(!requests.empty(), "generate: no prompts");
  QAD_CHECK(o.max_new_tokens >= 0, "--max-new-tokens must be >= 0, got {}", o.max_new_tokens);
  QAD_CHECK(o.check_every >= 1 && o.prefill_tokens >= 1 && o.max_slots >= 0,
            "generate: check_every and prefill_tokens must be >= 1, max_slots >= 0");
  QAD_CHECK(o.kv_memory_fraction > 0 && o.kv_memory_fraction <= 1, "generate: kv_memory_fraction must be in (0, 1]");
  check_sampling_options(o.sampling);
  const int64_t vocab = lm->config().vocab_size;
  for (size_t i = 0; i < requests.size(); ++i) {
    QAD_CHECK(!requests[i].prompt.empty(), "generate: prompt {} is empty (give at least BOS)", i);
    for (auto id : requests[i].prompt) {
      QAD_CHECK(id >= 0 && id < vocab, "generate: prompt {} has token id {} outside the vocabulary (size {})", i, id, vocab);
    }
  }
  for (auto id : o.stop_ids) QAD_CHECK(id >= 0 && id < vocab, "stop id {} outside the vocabulary (size {})", id, vocab);
  GenerateStats local;
  if (o.max_new_tokens == 0) return std::vector<GenerationOutput>(requests.size());
  // NemotronH: its Mamba states have no slots in the engine yet; each sequence decodes alone.
  if (lm->config().hybrid) return generate_hybrid(lm, requests, o);
  torch::NoGradGuard no_grad;
  Engine engine(lm, requests, o, stats != nullptr ? *stats : local);
  return engine.run();
}

}  // namespace qad::model
