// `qad teacher-cache`: runs the teacher once over the rows a `qad distill` run with the same settings will train
// on, in the train loader's order, and writes a teacher cache (teacher_cache.h, docs/teacher_cache.md). A build
// stopped part-way is resumed by running it again: shards already written are kept.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

#include "train/config.h"

namespace qad::train {

struct TeacherCacheOptions {
  int64_t top_k = 64;          // logits kept per position
  std::string values = "auto"; // dtype of the cached logits and hidden rows: auto (the teacher's, lossless),
                               // bfloat16, float16, float32
  int ranks = 1;               // the number of ranks qad distill will run on (the row order is the global batch's)
  int compression_level = 3;   // zstd level of the shards (0: raw)
  double shard_mb = 256;       // target uncompressed shard size (at least one global batch per shard)
};

struct TeacherCacheSummary {
  int64_t rows = 0, rows_computed = 0, tokens = 0;
  double seconds = 0;
  double topk_mass = 0;        // mean teacher probability inside the top-k, over trained tokens (computed rows)
  double bytes_per_token = 0;  // on disk, compressed, of the rows computed
  int64_t row_bytes = 0;
};

// cfg: the distill configuration (teacher, data, steps, batch size, seq_len, data seed, grad_accum, CKA settings,
// device); the cache goes to cfg.run.out (a .jsonl / .txt dataset is prepared into OUT/data/train).
TeacherCacheSummary build_teacher_cache(const TrainConfig& cfg, const TeacherCacheOptions& options);

}  // namespace qad::train
