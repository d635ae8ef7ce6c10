// Fixed-length training batches from a prepared dataset: packing or padding, a deterministic shuffle per
// epoch, a document-level train/validation split, sharding by data-parallel rank, and an exact resume
// position. Semantics in docs/data.md ("Loader").
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace qad::data {

enum class PackMode { pack, pad };
enum class Split { train, valid, all };

struct LoaderOptions {
  int64_t seq_len = 512;    // T: each row has T inputs and T targets
  int64_t batch_size = 8;   // rows per rank per step
  PackMode mode = PackMode::pack;
  uint64_t seed = 0;        // shuffle seed; epoch e uses streams derived from (seed, e)
  bool shuffle = true;      // false: documents and windows in dataset order (e.g. for validation)
  Split split = Split::train;
  double valid_fraction = -1;  // < 0: the dataset's default from prepare time
  int rank = 0, world_size = 1;
  bool drop_last = true;    // drop the final partial global batch of each epoch
  int32_t pad_id = 0;       // input/target id in padded positions (masked out)
  std::string expected_fingerprint;  // non-empty: the dataset's encoder fingerprint must match
};

// Rows × seq_len, row-major. loss_mask[r][t] = 1 where targets[r][t] is trained on; attention_mask 1 on
// real (non-padding) input positions.
struct Batch {
  std::vector<int32_t> input_ids, targets;
  std::vector<uint8_t> loss_mask, attention_mask;
  int64_t batch = 0, seq_len = 0;
  std::vector<int64_t> sample_ids;  // per row: the window index (pack) or document index (pad) in the epoch
  int64_t epoch = 0, step = 0;      // where this batch was taken from
  int64_t position = 0;             // row r is position `position + r` of the epoch's order (rows are consecutive)
};

// The resume position plus everything that must match for "continue exactly" to mean something.
struct LoaderState {
  int64_t epoch = 0, step = 0;  // the next batch is step `step` of epoch `epoch`
  uint64_t seed = 0;
  nlohmann::json config;  // seq_len, batch_size, mode, split, ... and the dataset's identity
  nlohmann::json to_json() const;
  static LoaderState from_json(const nlohmann::json& j);
};

class Loader {
 public:
  Loader(const std::filesystem::path& dataset_dir, LoaderOptions options);
  Loader(std::shared_ptr<const TokenDataset> dataset, LoaderOptions options);

  Batch next();  // the next batch of this rank; moves on to the next epoch after the last step of one
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t samples_per_epoch() const { return samples_; }  // windows (pack) or documents (pad), all ranks
  int64_t split_documents() const { return static_cast<int64_t>(docs_.size()); }
  int64_t split_tokens() const { return split_tokens_; }
  const LoaderOptions& options() const { return options_; }
  const TokenDataset& dataset() const { return *dataset_; }

  LoaderState state() const;
  // Continues exactly where `state` was taken (by this or another rank, with this or another global batch whose
  // position is a step boundary here); throws qad::Error naming the first setting that differs between the state
  // and this loader, or the row that does not begin a step of this loader.
  void restore(const LoaderState& state);

 private:
  void build_epoch(int64_t epoch);
  nlohmann::json config() const;
  void fill_pack_row(int64_t window, int32_t* in, int32_t* tgt, uint8_t* loss, uint8_t* attn) const;
  void fill_pad_row(int64_t doc, int32_t* in, int32_t* tgt, uint8_t* loss, uint8_t* attn) const;

  std::shared_ptr<const TokenDataset> dataset_;
  LoaderOptions options_;
  std::vector<int64_t> docs_;  // global indexes of this split's documents, in dataset order
  int64_t split_tokens_ = 0, samples_ = 0, steps_per_epoch_ = 0;
  int64_t epoch_ = 0, step_ = 0;
  // Tables of the epoch in `built_epoch_`.
  int64_t built_epoch_ = -1;
  std::vector<int64_t> order_;       // pack: documents in stream order; pad: documents in row order
  std::vector<int64_t> stream_at_;   // pack: first stream position of order_[k]; back() = split_tokens_
  std::vector<int64_t> windows_;     // pack: window indexes in visiting order
};

}  // namespace qad::data
