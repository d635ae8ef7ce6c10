// A teacher cache (docs/teacher_cache.md): the teacher's top-k logits (and, for CKA-QAD, its hidden-state rows of
// fixed token subsamples) for every row a `qad distill` run will train on, so that the run needs no teacher in
// memory. Rows are keyed by their global index in the train loader's deterministic order, not by rank: any split
// over ranks, micro-batches and grad_accum whose epoch holds the same rows reads the same cache (with CKA rows:
// at the data.batch_size it was built with). The manifest records the data and order the rows were
// taken with; a run with another is refused, and every row is checked against a hash of its input ids.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/loader.h"
#include "loss/teacher_targets.h"
#include "train/config.h"

namespace qad::train {

// What one cached row holds; every row has the same size (row_bytes), in this order:
//   uint64 input-id hash, int64 sample id, int32 CKA token count c, int32 (unused),
//   float32 teacher logsumexp [T]           (the full-vocabulary normaliser: top-k log-probs = logits - lse),
//   value   top-k logits [T][k]             (descending, in value_dtype),
//   int32   top-k ids [T][k],
//   int32   CKA positions [P]               (c used, ascending; the rest -1),
//   value   CKA hidden rows [layers][P][H]  (c used per layer; the rest 0).
struct TeacherCacheLayout {
  int64_t seq_len = 0, top_k = 0;
  torch::ScalarType value_dtype = torch::kBFloat16;
  std::vector<std::string> cka_layers;  // empty: no CKA rows
  int64_t cka_tokens_per_row = 0;       // P
  int64_t hidden_size = 0;              // H
  int64_t row_bytes() const;
};

struct TeacherCacheManifest {
  TeacherCacheLayout layout;
  int64_t rows = 0;            // global rows [0, rows) are cached
  int64_t rows_per_shard = 0;  // shard i holds rows [i * rows_per_shard, ...)
  int64_t global_batch = 0;    // data.batch_size x ranks: the row order is the loader's for this global batch
  int64_t rows_per_epoch = 0;  // the loader's steps per epoch x global_batch
  uint64_t data_seed = 0;
  nlohmann::json loader;       // the loader's settings and the dataset's identity (without batch_size/world_size)
  int64_t cka_subsample_tokens = 0;  // loss.cka_subsample_tokens the CKA rows were drawn for
  uint64_t cka_seed = 0;
  std::string teacher;         // where the teacher was read from, and a hash of its config.json
  std::string teacher_config_hash;
  // The dtype of the teacher's logits the top-k values were taken from ("": a cache built before it was recorded,
  // which the tail category refuses): values in a narrower dtype are rounded, and the tail's mass 1 - sum_S p
  // would be rounding noise.
  std::string logits_dtype;
  int compression_level = 0;   // zstd level of the shards (0: stored raw)
  bool complete = false;       // every shard written
  nlohmann::json stats;        // written at the end: top-k mass, bytes per token, seconds

  nlohmann::json to_json() const;
  static TeacherCacheManifest from_json(const nlohmann::json& j, const std::string& where);
};

// The manifest's name of a dtype: bfloat16, float16, float32 or float64.
std::string cache_dtype_name(torch::ScalarType t);
// FNV-1a over a row's int32 input ids: a cached row must be the row the loader gives.
uint64_t row_hash(const int32_t* ids, int64_t n);
// A hash of the teacher directory's config.json ("" when it has none).
std::string teacher_config_hash(const std::filesystem::path& teacher_dir);
// The loader settings a cache is keyed by: Loader::state().config without the per-rank split.
nlohmann::json cache_loader_key(const data::Loader& loader);
// Global index of row j of a batch the loader returned, for `rows_per_epoch` as above: epoch * rows_per_epoch +
// the row's position in the epoch's order (the same whichever rank, or split of the global batch, reads it).
int64_t global_row_index(const data::Batch& batch, int64_t j, int64_t rows_per_epoch);
// CKA positions cached per row: the micro-batch's subsample (loss.cka_subsample_tokens) spread evenly over its
// data.batch_size rows, at most the row's length (a subsample of 0 means every position).
int64_t cka_tokens_per_row(int64_t subsample_tokens, int64_t micro_batch, int64_t seq_len);

// Shard files "shard-NNNNNN.bin": a 64-byte header (magic "QADTCSH1", uint64 first row, uint64 rows, uint64 row
// bytes, uint64 payload bytes, uint32 zstd level, padding) and the rows, zstd-compressed unless the level is 0.
// Written atomically.
std::filesystem::path shard_path(const std::filesystem::path& dir, int64_t shard);
void write_shard(const std::filesystem::path& path, int64_t first_row, int64_t rows, int64_t row_bytes,
                 const std::string& raw, int level);
// The rows of a shard (rows x row_bytes bytes); throws naming the file when it is missing, truncated, corrupt or
// not the shard expected.
std::string read_shard(const std::filesystem::path& path, int64_t first_row, int64_t rows, int64_t row_bytes);
// Whether a complete shard with these rows is on disk (a resumed build skips it).
bool shard_is_complete(const std::filesystem::path& path, int64_t first_row, int64_t rows, int64_t row_bytes);

class TeacherCache {
 public:
  explicit TeacherCache(std::filesystem::path dir);  // reads DIR/manifest.json
  const TeacherCacheManifest& manifest() const { return m_; }
  const std::filesystem::path& dir() const { return dir_; }

  // Refuses (qad::Error naming the setting and the fix) a run the cache does not fit: another dataset, split,
  // seed, sequence length, row order (a global batch that leaves another number of rows per epoch) or teacher;
  // more rows than cached; a top-k above the cache's; a CKA term with layers, a subsample or CKA tokens per row
  // (data.batch_size) the cache was not built for; the tail KL at a temperature other than 1.
  void check_run(const TrainConfig& cfg, const data::Loader& train_loader) const;

  // The teacher's targets for a batch the train loader returned, on `device`: the first `top_k` of the cached
  // logits (0: all) and the logsumexp, the CKA rows of `cka_layers` (empty: none). Each row's input ids are checked against the
  // cached hash.
  std::shared_ptr<const loss::TeacherTargets> targets(const data::Batch& batch, const data::LoaderOptions& o,
                                                      torch::Device device, int64_t top_k,
                                                      const std::vector<std::string>& cka_layers);

 private:
  const char* row(int64_t global);

  std::filesystem::path dir_;
  TeacherCacheManifest m_;
  int64_t loaded_shard_ = -1;
  std::string shard_rows_;  // the rows of loaded_shard_
};

}  // namespace qad::train
