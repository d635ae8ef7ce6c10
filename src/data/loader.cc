#include "data/loader.h"

#include <algorithm>

#include "data/shuffle.h"
#include "util/error.h"

namespace qad::data {
namespace {

// Stream purposes for mix_seed: one independent permutation per (epoch, purpose).
constexpr uint64_t kDocOrderStream = 1, kWindowOrderStream = 2;

const char* mode_name(PackMode m) { return m == PackMode::pack ? "pack" : "pad"; }
const char* split_name(Split s) { return s == Split::train ? "train" : s == Split::valid ? "valid" : "all"; }

// Steps of `global` rows in an epoch of `samples` rows; with drop_last the short final batch is not a step.
int64_t steps_in_epoch(int64_t samples, int64_t global, bool drop_last) {
  return drop_last ? samples / global : (samples + global - 1) / global;
}

}  // namespace

nlohmann::json LoaderState::to_json() const {
  return {{"format", "qad-loader-state"}, {"version", 1}, {"epoch", epoch}, {"step", step}, {"seed", seed},
          {"config", config}};
}

LoaderState LoaderState::from_json(const nlohmann::json& j) {
  try {
    QAD_CHECK(j.value("format", "") == "qad-loader-state", "not a loader state (format is not \"qad-loader-state\")");
    QAD_CHECK(j.at("version").get<int>() == 1, "loader state version {} is not supported (this build reads 1)",
              j.at("version").dump());
    LoaderState s;
    s.epoch = j.at("epoch").get<int64_t>();
    s.step = j.at("step").get<int64_t>();
    s.seed = j.at("seed").get<uint64_t>();
    s.config = j.at("config");
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail("cannot read the loader state: {}", e.what());
  }
}

Loader::Loader(const std::filesystem::path& dataset_dir, LoaderOptions options)
    : Loader(std::make_shared<const TokenDataset>(dataset_dir), std::move(options)) {}

Loader::Loader(std::shared_ptr<const TokenDataset> dataset, LoaderOptions options)
    : dataset_(std::move(dataset)), options_(std::move(options)) {
  auto& o = options_;
  const std::string where = dataset_->dir().string();
  QAD_CHECK(o.seq_len > 0 && o.batch_size > 0, "seq_len ({}) and batch_size ({}) must be positive", o.seq_len,
            o.batch_size);
  QAD_CHECK(o.world_size > 0 && o.rank >= 0 && o.rank < o.world_size, "rank {} is not in [0, world_size {})", o.rank,
            o.world_size);
  QAD_CHECK(o.pad_id >= 0 && o.pad_id < dataset_->vocab_size(), "pad_id {} is outside the vocabulary [0, {})",
            o.pad_id, dataset_->vocab_size());
  QAD_CHECK(o.expected_fingerprint.empty() || o.expected_fingerprint == dataset_->fingerprint(),
            "dataset {} was encoded with tokenizer '{}' but this run uses '{}'; prepare the data again with this "
            "tokenizer",
            where, dataset_->fingerprint(), o.expected_fingerprint);
  if (o.valid_fraction < 0) o.valid_fraction = dataset_->valid_fraction();
  QAD_CHECK(o.valid_fraction >= 0 && o.valid_fraction < 1, "valid_fraction must be in [0, 1), got {}",
            o.valid_fraction);
  QAD_CHECK(o.split != Split::valid || o.valid_fraction > 0,
            "split=valid needs valid_fraction > 0 (dataset {} was prepared without --valid-fraction)", where);

  const uint64_t split_seed = dataset_->split_seed();
  for (uint64_t d = 0; d < dataset_->num_documents(); ++d) {
    const bool valid = in_validation(split_seed, d, o.valid_fraction);
    if (o.split == Split::all || (o.split == Split::valid) == valid) {
      docs_.push_back(static_cast<int64_t>(d));
      split_tokens_ += static_cast<int64_t>(dataset_->document(d).size);
    }
  }
  if (o.mode == PackMode::pack) {
    samples_ = split_tokens_ >= 1 ? (split_tokens_ - 1) / o.seq_len : 0;
  } else {
    samples_ = static_cast<int64_t>(docs_.size());
  }
  const int64_t global = o.batch_size * o.world_size;
  steps_per_epoch_ = steps_in_epoch(samples_, global, o.drop_last);
  QAD_CHECK(steps_per_epoch_ > 0,
            "dataset {} ({} split: {} documents, {} tokens) gives {} {} of length {}, fewer than one global batch "
            "of {} (batch_size {} x world_size {}); use more data, or a smaller batch size or sequence length",
            where, split_name(o.split), docs_.size(), split_tokens_, samples_,
            o.mode == PackMode::pack ? "windows" : "documents", o.seq_len, global, o.batch_size, o.world_size);
}

void Loader::build_epoch(int64_t epoch) {
  if (built_epoch_ == epoch) return;
  const auto e = static_cast<uint64_t>(epoch);
  order_ = docs_;
  if (options_.shuffle) {
    auto perm = permutation(static_cast<int64_t>(docs_.size()), mix_seed(options_.seed, e, kDocOrderStream));
    for (size_t k = 0; k < perm.size(); ++k) order_[k] = docs_[static_cast<size_t>(perm[k])];
  }
  if (options_.mode == PackMode::pack) {
    stream_at_.resize(order_.size() + 1);
    stream_at_[0] = 0;
    for (size_t k = 0; k < order_.size(); ++k) {
      stream_at_[k + 1] = stream_at_[k] + static_cast<int64_t>(dataset_->document(order_[k]).size);
    }
    if (options_.shuffle) {
      windows_ = permutation(samples_, mix_seed(options_.seed, e, kWindowOrderStream));
    } else {
      windows_.resize(static_cast<size_t>(samples_));
      for (int64_t w = 0; w < samples_; ++w) windows_[w] = w;
    }
  }
  built_epoch_ = epoch;
}

void Loader::fill_pack_row(int64_t window, int32_t* in, int32_t* tgt, uint8_t* loss, uint8_t* attn) const {
  const int64_t T = options_.seq_len;
  int64_t pos = window * T;  // the window is stream[pos, pos + T + 1)
  size_t k = static_cast<size_t>(std::upper_bound(stream_at_.begin(), stream_at_.end(), pos) - stream_at_.begin()) - 1;
  DocumentView doc = dataset_->document(order_[k]);
  for (int64_t i = 0; i <= T; ++i, ++pos) {
    if (pos >= stream_at_[k + 1]) {
      while (pos >= stream_at_[k + 1]) ++k;  // skips empty documents too
      doc = dataset_->document(order_[k]);
    }
    const auto off = static_cast<uint64_t>(pos - stream_at_[k]);
    const auto id = static_cast<int32_t>(doc.token(off));
    if (i < T) {
      in[i] = id;
      attn[i] = 1;
    }
    if (i > 0) {
      tgt[i - 1] = id;
      loss[i - 1] = doc.mask(off) ? 1 : 0;
    }
  }
}

void Loader::fill_pad_row(int64_t doc_index, int32_t* in, int32_t* tgt, uint8_t* loss, uint8_t* attn) const {
  const int64_t T = options_.seq_len;
  const DocumentView doc = dataset_->document(doc_index);
  const int64_t used = std::min<int64_t>(static_cast<int64_t>(doc.size), T + 1);  // truncated to T + 1 tokens
  for (int64_t t = 0; t < T; ++t) {
    if (t + 1 < used) {
      in[t] = static_cast<int32_t>(doc.token(t));
      tgt[t] = static_cast<int32_t>(doc.token(t + 1));
      loss[t] = doc.mask(t + 1) ? 1 : 0;
      attn[t] = 1;
    } else {
      in[t] = tgt[t] = options_.pad_id;
      loss[t] = attn[t] = 0;
    }
  }
}

Batch Loader::next() {
  if (step_ >= steps_per_epoch_) {
    ++epoch_;
    step_ = 0;
  }
  build_epoch(epoch_);
  const auto& o = options_;
  const int64_t W = o.world_size, B = o.batch_size, T = o.seq_len;
  // Step s covers positions [s*B*W, (s+1)*B*W) of the epoch's order, cut into W contiguous blocks: rank r takes
  // block r, the rows a one-process run with W micro-batches (grad_accum W) takes as its micro-batch r, so that
  // W ranks can reproduce that run exactly (docs/dist.md). In a final partial step the first n % W blocks are one
  // row longer (the ranks' row counts differ by at most one).
  const int64_t base = step_ * B * W;
  const int64_t n = std::min(B * W, samples_ - base), q = n / W, rem = n % W;
  const int64_t first = base + o.rank * q + std::min<int64_t>(o.rank, rem);
  const int64_t count = q + (o.rank < rem ? 1 : 0);
  Batch b;
  b.seq_len = T;
  b.epoch = epoch_;
  b.step = step_;
  b.position = first;
  for (int64_t pos = first; pos < first + count; ++pos) {
    b.sample_ids.push_back(o.mode == PackMode::pack ? windows_[pos] : order_[pos]);
  }
  b.batch = static_cast<int64_t>(b.sample_ids.size());
  const auto cells = static_cast<size_t>(b.batch * T);
  b.input_ids.resize(cells);
  b.targets.resize(cells);
  b.loss_mask.resize(cells);
  b.attention_mask.resize(cells);
  for (int64_t r = 0; r < b.batch; ++r) {
    const size_t at = static_cast<size_t>(r * T);
    if (o.mode == PackMode::pack) {
      fill_pack_row(b.sample_ids[r], &b.input_ids[at], &b.targets[at], &b.loss_mask[at], &b.attention_mask[at]);
    } else {
      fill_pad_row(b.sample_ids[r], &b.input_ids[at], &b.targets[at], &b.loss_mask[at], &b.attention_mask[at]);
    }
  }
  ++step_;
  return b;
}

nlohmann::json Loader::config() const {
  const auto& o = options_;
  return {{"seq_len", o.seq_len},
          {"batch_size", o.batch_size},
          {"world_size", o.world_size},
          {"mode", mode_name(o.mode)},
          {"shuffle", o.shuffle},
          {"split", split_name(o.split)},
          {"valid_fraction", o.valid_fraction},
          {"drop_last", o.drop_last},
          {"pad_id", o.pad_id},
          {"dataset",
           {{"fingerprint", dataset_->fingerprint()},
            {"documents", dataset_->num_documents()},
            {"tokens", dataset_->num_tokens()},
            {"split_seed", dataset_->split_seed()}}}};
}

LoaderState Loader::state() const {
  LoaderState s;
  s.epoch = epoch_;
  s.step = step_;
  s.seed = options_.seed;
  s.config = config();
  return s;
}

void Loader::restore(const LoaderState& s) {
  QAD_CHECK(s.seed == options_.seed, "cannot resume: the saved loader state has seed {} but this loader has seed {}",
            s.seed, options_.seed);
  const auto mine = config();
  for (const auto& [key, value] : mine.items()) {
    if (key == "batch_size" || key == "world_size") continue;
    QAD_CHECK(s.config.contains(key) && s.config.at(key) == value,
              "cannot resume: the saved loader state has {} = {} but this loader has {}; resume with the same data "
              "settings and dataset",
              key, s.config.contains(key) ? s.config.at(key).dump() : "(missing)", value.dump());
  }
  // The position is a step of batch_size x world_size rows, that is a row of the epoch's order, which no batch size
  // changes: a state taken with another global batch (2 ranks x 4 rows, then 1 rank x 8, or 1 x 4 with two
  // micro-batches per step) continues exactly where its rows end, when that row begins one of this loader's steps.
  const int64_t saved_b = s.config.value("batch_size", int64_t{0}), saved_w = s.config.value("world_size", int64_t{1});
  const int64_t saved_global = saved_b * saved_w, global = options_.batch_size * options_.world_size;
  QAD_CHECK(saved_global > 0, "cannot resume: the saved loader state has batch_size {} x world_size {}", saved_b,
            saved_w);
  const int64_t saved_steps = steps_in_epoch(samples_, saved_global, options_.drop_last);
  QAD_CHECK(s.epoch >= 0 && s.step >= 0 && s.step <= saved_steps,
            "cannot resume: the saved position (epoch {}, step {}) is outside an epoch of {} steps of {} rows", s.epoch,
            s.step, saved_steps, saved_global);
  const int64_t row = s.step * saved_global;
  QAD_CHECK(s.step == saved_steps || row % global == 0,
            "cannot resume: the saved loader state stopped after row {} of epoch {} (step {} of {} rows: batch_size "
            "{} x world_size {}), which does not begin a step of this loader's global batch of {} rows (batch_size {} "
            "x world_size {}); resume with a global batch that divides {}, such as the saved one",
            row, s.epoch, s.step, saved_global, saved_b, saved_w, global, options_.batch_size, options_.world_size,
            row);
  epoch_ = s.epoch;
  // A finished epoch stays finished (the next step starts the next epoch, as it would have in the saved run).
  step_ = s.step == saved_steps ? steps_per_epoch_ : std::min(row / global, steps_per_epoch_);
}

}  // namespace qad::data
