// The teacher cache's format, shards and reader (see teacher_cache.h).
#include "train/teacher_cache.h"

#include <fmt/format.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::train {
namespace fs = std::filesystem;
namespace {

constexpr char kShardMagic[8] = {'Q', 'A', 'D', 'T', 'C', 'S', 'H', '1'};
constexpr int64_t kShardHeader = 64;
constexpr int64_t kRowHeader = 24;  // hash, sample id, CKA count, unused

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    case torch::kFloat32: return "float32";
    case torch::kFloat64: return "float64";
    default: fail("teacher cache: values of dtype {} are not supported", c10::toString(t));
  }
}

torch::ScalarType dtype_of(const std::string& s, const std::string& where) {
  if (s == "bfloat16") return torch::kBFloat16;
  if (s == "float16") return torch::kFloat16;
  if (s == "float32") return torch::kFloat32;
  if (s == "float64") return torch::kFloat64;
  fail("{}: unknown value dtype '{}' (bfloat16, float16, float32 or float64)", where, s);
}

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

template <typename T>
T read_at(const std::string& s, size_t off) {
  T v;
  std::memcpy(&v, s.data() + off, sizeof(T));
  return v;
}

}  // namespace

std::string cache_dtype_name(torch::ScalarType t) { return dtype_name(t); }

int64_t TeacherCacheLayout::row_bytes() const {
  const int64_t v = static_cast<int64_t>(c10::elementSize(value_dtype));
  const int64_t layers = static_cast<int64_t>(cka_layers.size());
  return kRowHeader + 4 * seq_len + v * seq_len * top_k + 4 * seq_len * top_k + 4 * cka_tokens_per_row +
         v * layers * cka_tokens_per_row * hidden_size;
}

nlohmann::json TeacherCacheManifest::to_json() const {
  const auto& l = layout;
  return {{"format", "qad-teacher-cache"}, {"version", 1},
          {"seq_len", l.seq_len}, {"top_k", l.top_k}, {"value_dtype", dtype_name(l.value_dtype)},
          {"cka_layers", l.cka_layers}, {"cka_tokens_per_row", l.cka_tokens_per_row}, {"hidden_size", l.hidden_size},
          {"row_bytes", l.row_bytes()}, {"rows", rows}, {"rows_per_shard", rows_per_shard},
          {"global_batch", global_batch}, {"rows_per_epoch", rows_per_epoch}, {"data_seed", data_seed},
          {"loader", loader}, {"cka_subsample_tokens", cka_subsample_tokens}, {"cka_seed", cka_seed},
          {"teacher", teacher}, {"teacher_config_hash", teacher_config_hash}, {"logits_dtype", logits_dtype},
          {"compression_level", compression_level}, {"complete", complete}, {"stats", stats}};
}

TeacherCacheManifest TeacherCacheManifest::from_json(const nlohmann::json& j, const std::string& where) {
  try {
    QAD_CHECK(j.value("format", "") == "qad-teacher-cache", "{}: not a teacher cache manifest (format is not "
              "\"qad-teacher-cache\")", where);
    QAD_CHECK(j.at("version").get<int>() == 1, "{}: teacher cache version {} is not supported (this build reads 1)",
              where, j.at("version").dump());
    TeacherCacheManifest m;
    m.layout.seq_len = j.at("seq_len").get<int64_t>();
    m.layout.top_k = j.at("top_k").get<int64_t>();
    m.layout.value_dtype = dtype_of(j.at("value_dtype").get<std::string>(), where);
    m.layout.cka_layers = j.at("cka_layers").get<std::vector<std::string>>();
    m.layout.cka_tokens_per_row = j.at("cka_tokens_per_row").get<int64_t>();
    m.layout.hidden_size = j.at("hidden_size").get<int64_t>();
    m.rows = j.at("rows").get<int64_t>();
    m.rows_per_shard = j.at("rows_per_shard").get<int64_t>();
    m.global_batch = j.at("global_batch").get<int64_t>();
    m.rows_per_epoch = j.at("rows_per_epoch").get<int64_t>();
    m.data_seed = j.at("data_seed").get<uint64_t>();
    m.loader = j.at("loader");
    m.cka_subsample_tokens = j.at("cka_subsample_tokens").get<int64_t>();
    m.cka_seed = j.at("cka_seed").get<uint64_t>();
    m.teacher = j.at("teacher").get<std::string>();
    m.teacher_config_hash = j.at("teacher_config_hash").get<std::string>();
    m.logits_dtype = j.value("logits_dtype", "");
    m.compression_level = j.at("compression_level").get<int>();
    m.complete = j.at("complete").get<bool>();
    m.stats = j.value("stats", nlohmann::json::object());
    QAD_CHECK(j.at("row_bytes").get<int64_t>() == m.layout.row_bytes(), "{}: row_bytes {} does not match the layout "
              "({}); the manifest is damaged", where, j.at("row_bytes").dump(), m.layout.row_bytes());
    QAD_CHECK(m.rows_per_shard > 0 && m.rows >= 0 && m.global_batch > 0 && m.layout.top_k > 0,
              "{}: rows_per_shard, global_batch and top_k must be positive; the manifest is damaged", where);
    return m;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: cannot read the teacher cache manifest: {}", where, e.what());
  }
}

uint64_t row_hash(const int32_t* ids, int64_t n) { return fnv1a(ids, static_cast<size_t>(n) * sizeof(int32_t)); }

std::string teacher_config_hash(const fs::path& teacher_dir) {
  const auto p = teacher_dir / "config.json";
  if (!fs::exists(p)) return "";
  const auto s = read_file(p);
  return fmt::format("{:016x}", fnv1a(s.data(), s.size()));
}

nlohmann::json cache_loader_key(const data::Loader& loader) {
  auto c = loader.state().config;
  c.erase("batch_size");
  c.erase("world_size");
  return c;
}

int64_t global_row_index(const data::Batch& batch, int64_t j, int64_t rows_per_epoch) {
  return batch.epoch * rows_per_epoch + batch.position + j;
}

int64_t cka_tokens_per_row(int64_t subsample_tokens, int64_t micro_batch, int64_t seq_len) {
  if (subsample_tokens <= 0) return seq_len;
  return std::min<int64_t>((subsample_tokens + micro_batch - 1) / micro_batch, seq_len);
}

fs::path shard_path(const fs::path& dir, int64_t shard) { return dir / fmt::format("shard-{:06d}.bin", shard); }

void write_shard(const fs::path& path, int64_t first_row, int64_t rows, int64_t row_bytes, const std::string& raw,
                 int level) {
  QAD_CHECK(static_cast<int64_t>(raw.size()) == rows * row_bytes, "write_shard {}: {} bytes for {} rows of {}",
            path.string(), raw.size(), rows, row_bytes);
  std::string payload;
  if (level > 0) {
    payload.resize(ZSTD_compressBound(raw.size()));
    const size_t n = ZSTD_compress(payload.data(), payload.size(), raw.data(), raw.size(), level);
    QAD_CHECK(!ZSTD_isError(n), "{}: zstd compression failed: {}", path.string(), ZSTD_getErrorName(n));
    payload.resize(n);
  }
  const std::string& body = level > 0 ? payload : raw;
  std::string header(kShardHeader, '\0');
  const uint64_t fields[4] = {static_cast<uint64_t>(first_row), static_cast<uint64_t>(rows),
                              static_cast<uint64_t>(row_bytes), static_cast<uint64_t>(body.size())};
  const auto lvl = static_cast<uint32_t>(level);
  std::memcpy(header.data(), kShardMagic, 8);
  std::memcpy(header.data() + 8, fields, sizeof fields);
  std::memcpy(header.data() + 40, &lvl, sizeof lvl);
  write_file_atomic(path, [&](const fs::path& tmp) {
    std::ofstream f(tmp, std::ios::binary);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    f.write(body.data(), static_cast<std::streamsize>(body.size()));
    QAD_CHECK(f.good(), "cannot write {} (disk full?)", tmp.string());
  });
}

namespace {

// The header's fields, checked against the shard expected; returns the payload size and level.
std::pair<uint64_t, uint32_t> check_header(const std::string& header, const fs::path& path, int64_t first_row,
                                           int64_t rows, int64_t row_bytes) {
  QAD_CHECK(header.size() >= static_cast<size_t>(kShardHeader) && std::memcmp(header.data(), kShardMagic, 8) == 0,
            "{}: not a teacher cache shard (bad magic); rebuild the cache with qad teacher-cache", path.string());
  const auto f0 = read_at<uint64_t>(header, 8), f1 = read_at<uint64_t>(header, 16), f2 = read_at<uint64_t>(header, 24);
  QAD_CHECK(f0 == static_cast<uint64_t>(first_row) && f1 == static_cast<uint64_t>(rows) &&
                f2 == static_cast<uint64_t>(row_bytes),
            "{}: holds rows [{}, +{}) of {} bytes where the manifest says [{}, +{}) of {}; the cache is mixed from "
            "two builds: rebuild it in an empty directory", path.string(), f0, f1, f2, first_row, rows, row_bytes);
  return {read_at<uint64_t>(header, 32), read_at<uint32_t>(header, 40)};
}

}  // namespace

std::string read_shard(const fs::path& path, int64_t first_row, int64_t rows, int64_t row_bytes) {
  QAD_CHECK(fs::exists(path), "{}: missing; the teacher cache is incomplete (was qad teacher-cache stopped? run it "
            "again with the same arguments to finish it)", path.string());
  const std::string file = read_file(path);
  const auto [payload, level] = check_header(file, path, first_row, rows, row_bytes);
  QAD_CHECK(file.size() == kShardHeader + payload, "{}: {} bytes where the header says {}; the shard is truncated: "
            "delete it and run qad teacher-cache again to rewrite it", path.string(), file.size(),
            kShardHeader + payload);
  const auto raw_size = static_cast<size_t>(rows * row_bytes);
  if (level == 0) {
    QAD_CHECK(payload == raw_size, "{}: {} bytes of rows where {} are expected", path.string(), payload, raw_size);
    return file.substr(kShardHeader);
  }
  std::string raw(raw_size, '\0');
  const size_t n = ZSTD_decompress(raw.data(), raw.size(), file.data() + kShardHeader, payload);
  QAD_CHECK(!ZSTD_isError(n) && n == raw_size, "{}: cannot decompress ({}); delete it and run qad teacher-cache "
            "again to rewrite it", path.string(), ZSTD_isError(n) ? ZSTD_getErrorName(n) : "wrong size");
  return raw;
}

bool shard_is_complete(const fs::path& path, int64_t first_row, int64_t rows, int64_t row_bytes) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec || size < static_cast<uintmax_t>(kShardHeader)) return false;
  std::ifstream f(path, std::ios::binary);
  std::string header(kShardHeader, '\0');
  f.read(header.data(), kShardHeader);
  if (!f || std::memcmp(header.data(), kShardMagic, 8) != 0) return false;
  if (read_at<uint64_t>(header, 8) != static_cast<uint64_t>(first_row) ||
      read_at<uint64_t>(header, 16) != static_cast<uint64_t>(rows) ||
      read_at<uint64_t>(header, 24) != static_cast<uint64_t>(row_bytes)) {
    return false;
  }
  return size == kShardHeader + read_at<uint64_t>(header, 32);
}

// --- the reader

TeacherCache::TeacherCache(fs::path dir) : dir_(std::move(dir)) {
  const auto path = dir_ / "manifest.json";
  QAD_CHECK(fs::exists(path), "--teacher-cache {}: no manifest.json; build the cache with qad teacher-cache --out {}",
            dir_.string(), dir_.string());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not JSON ({})", path.string(), e.what());
  }
  m_ = TeacherCacheManifest::from_json(j, path.string());
  QAD_CHECK(m_.complete, "--teacher-cache {}: the cache is incomplete (qad teacher-cache did not finish); run it "
            "again with the same arguments to finish it", dir_.string());
}

void TeacherCache::check_run(const TrainConfig& cfg, const data::Loader& loader) const {
  const std::string where = "--teacher-cache " + dir_.string();
  QAD_CHECK(cfg.method == Method::kQad || cfg.method == Method::kCkaQad, "{}: a teacher cache replaces the teacher "
            "of qad and cka-qad; method {} does not use one", where, method_name(cfg.method));
  const auto& o = loader.options();
  QAD_CHECK(o.seq_len == m_.layout.seq_len, "{}: built for data.seq_len {} but this run has {}; rebuild the cache "
            "with --seq-len {} or run with --seq-len {}", where, m_.layout.seq_len, o.seq_len, o.seq_len,
            m_.layout.seq_len);
  QAD_CHECK(o.seed == m_.data_seed, "{}: built for data.seed {} but this run has {}; the rows would differ: rebuild "
            "the cache with --data-seed {} or run with --data-seed {}", where, m_.data_seed, o.seed, o.seed,
            m_.data_seed);
  // Rows are read by their position in the epoch's order, so any global batch (batch_size x ranks) reads the same
  // rows as long as the epoch holds as many of them (the loader drops the last partial global batch).
  const int64_t global = o.batch_size * o.world_size;
  const auto key = cache_loader_key(loader);
  for (const auto& [k, v] : key.items()) {
    QAD_CHECK(m_.loader.contains(k) && m_.loader.at(k) == v, "{}: built with loader setting {} = {} but this run has "
              "{}; the rows would differ: rebuild the cache with this run's data settings", where, k,
              m_.loader.contains(k) ? m_.loader.at(k).dump() : "(missing)", v.dump());
  }
  const int64_t rows_per_epoch = loader.steps_per_epoch() * global;
  QAD_CHECK(rows_per_epoch == m_.rows_per_epoch, "{}: built for a global batch of {} rows (data.batch_size x ranks), "
            "{} rows per epoch, but this run's global batch of {} rows ({} x {} ranks) leaves {} rows per epoch (the "
            "loader drops each epoch's last partial global batch), so the row order would differ: keep batch_size x "
            "ranks = {}, or rebuild with --batch-size {} --ranks {}", where, m_.global_batch, m_.rows_per_epoch, global,
            o.batch_size, o.world_size, rows_per_epoch, m_.global_batch, o.batch_size, o.world_size);
  const int64_t needed = cfg.run.steps * cfg.optim.grad_accum * global;
  QAD_CHECK(needed <= m_.rows, "{}: holds {} rows ({} optimizer steps of {} x {} rows) but this run trains on {} "
            "({} steps); rebuild it with --steps {} or run at most {} steps", where, m_.rows,
            m_.rows / std::max<int64_t>(cfg.optim.grad_accum * global, 1), cfg.optim.grad_accum, global, needed,
            cfg.run.steps, cfg.run.steps, m_.rows / std::max<int64_t>(cfg.optim.grad_accum * global, 1));
  QAD_CHECK(cfg.loss.top_k <= m_.layout.top_k, "{}: holds the teacher's top {} logits but loss.top_k is {}; rebuild "
            "it with --top-k {} or lower loss.top_k (0 = the cache's k)", where, m_.layout.top_k, cfg.loss.top_k,
            cfg.loss.top_k, m_.layout.top_k);
  if (cfg.loss.top_k_tail) {
    QAD_CHECK(!m_.logits_dtype.empty(), "{}: built before caches recorded the teacher's logits dtype, which the tail "
              "category needs to know that the cached logits are exact (loss.top_k_tail); rebuild it with qad "
              "teacher-cache, or train without --top-k-tail", where);
    const auto logits = dtype_of(m_.logits_dtype, where);
    // float32 holds BF16 and FP16 values exactly; anything else must be the logits' own dtype.
    QAD_CHECK(m_.layout.value_dtype == logits || m_.layout.value_dtype == torch::kFloat32, "{}: holds the teacher's "
              "{} logits rounded to {} (--values), and the tail category's mass (1 - the top-k probabilities) would "
              "be that rounding's noise; rebuild it with --values auto or float32, or train without --top-k-tail",
              where, m_.logits_dtype, dtype_name(m_.layout.value_dtype));
  }
  QAD_CHECK(!cfg.loss.top_k_tail || cfg.loss.temperature == 1.0, "{}: loss.top_k_tail needs the teacher's "
            "logsumexp at the run's temperature, and the cache holds it at temperature 1 only (it has the top-k logits, "
            "not the whole vocabulary), but loss.temperature is {}; run with --temperature 1, or without "
            "--top-k-tail (the renormalised top-k KL works at any temperature)", where, cfg.loss.temperature);
  const auto hash = teacher_config_hash(cfg.run.teacher);
  QAD_CHECK(hash == m_.teacher_config_hash, "{}: built from teacher {} whose config.json differs from --teacher {}'s; "
            "the student starts from --teacher's weights: use the cache's teacher or rebuild the cache", where,
            m_.teacher, cfg.run.teacher);
  if (cfg.loss.cka > 0) {
    QAD_CHECK(!m_.layout.cka_layers.empty(), "{}: holds no hidden states, but the CKA term is on (loss.cka {}); "
              "build the cache with the run's CKA settings (--method cka-qad)", where, cfg.loss.cka);
    QAD_CHECK(cfg.loss.cka_subsample_tokens == m_.cka_subsample_tokens, "{}: CKA rows drawn for "
              "loss.cka_subsample_tokens {} but this run has {}; rebuild the cache with --cka-subsample {}", where,
              m_.cka_subsample_tokens, cfg.loss.cka_subsample_tokens, cfg.loss.cka_subsample_tokens);
    // The subsample is spread over a micro-batch's rows: another data.batch_size needs another count per row.
    const int64_t per_row = cka_tokens_per_row(cfg.loss.cka_subsample_tokens, o.batch_size, o.seq_len);
    QAD_CHECK(per_row == m_.layout.cka_tokens_per_row, "{}: holds {} CKA tokens per row (loss.cka_subsample_tokens "
              "{} spread over the rows of the micro-batches it was built with), but this run's micro-batches of {} "
              "rows need {} per row; keep the data.batch_size the cache was built with (another number of ranks or "
              "grad_accum is fine), or rebuild the cache with --batch-size {}", where, m_.layout.cka_tokens_per_row,
              m_.cka_subsample_tokens, o.batch_size, per_row, o.batch_size);
    for (const auto& l : cfg.loss.cka_layers) {
      QAD_CHECK(std::find(m_.layout.cka_layers.begin(), m_.layout.cka_layers.end(), l) != m_.layout.cka_layers.end(),
                "{}: holds no hidden states of '{}' (it has {} layers: {}...); rebuild the cache with --cka-layers",
                where, l, m_.layout.cka_layers.size(), m_.layout.cka_layers.front());
    }
  }
}

const char* TeacherCache::row(int64_t g) {
  QAD_CHECK(g >= 0 && g < m_.rows, "--teacher-cache {}: row {} is beyond the {} rows cached; rebuild the cache with "
            "more --steps", dir_.string(), g, m_.rows);
  const int64_t shard = g / m_.rows_per_shard;
  if (shard != loaded_shard_) {
    const int64_t first = shard * m_.rows_per_shard;
    const int64_t n = std::min(m_.rows_per_shard, m_.rows - first);
    shard_rows_ = read_shard(shard_path(dir_, shard), first, n, m_.layout.row_bytes());
    loaded_shard_ = shard;
  }
  return shard_rows_.data() + (g - shard * m_.rows_per_shard) * m_.layout.row_bytes();
}

std::shared_ptr<const loss::TeacherTargets> TeacherCache::targets(const data::Batch& batch,
                                                                  const data::LoaderOptions& o, torch::Device device,
                                                                  int64_t top_k,
                                                                  const std::vector<std::string>& cka_layers) {
  const auto& l = m_.layout;
  const int64_t B = batch.batch, T = l.seq_len, K = l.top_k, P = l.cka_tokens_per_row, H = l.hidden_size;
  const int64_t k = top_k > 0 ? std::min(top_k, K) : K;
  QAD_CHECK(batch.seq_len == T, "teacher cache: a batch of length {} where the cache has {}", batch.seq_len, T);
  const auto vopt = torch::TensorOptions().dtype(l.value_dtype);
  const int64_t vsize = static_cast<int64_t>(c10::elementSize(l.value_dtype));
  auto values = torch::empty({B, T, K}, vopt);
  auto ids = torch::empty({B, T, K}, torch::kInt32);
  auto lse = torch::empty({B, T}, torch::kFloat32);
  // Which cached layers are asked for, in the order asked.
  std::vector<int64_t> layer_at;
  for (const auto& name : cka_layers) {
    auto it = std::find(l.cka_layers.begin(), l.cka_layers.end(), name);
    QAD_CHECK(it != l.cka_layers.end(), "--teacher-cache {}: holds no hidden states of '{}'", dir_.string(), name);
    layer_at.push_back(it - l.cka_layers.begin());
  }
  std::vector<int64_t> index;
  std::vector<std::vector<torch::Tensor>> hidden(layer_at.size());
  for (int64_t j = 0; j < B; ++j) {
    const int64_t g = global_row_index(batch, j, m_.rows_per_epoch);
    const char* r = row(g);
    uint64_t hash = 0;
    int64_t sample = 0;
    int32_t count = 0;
    std::memcpy(&hash, r, 8);
    std::memcpy(&sample, r + 8, 8);
    std::memcpy(&count, r + 16, 4);
    const int32_t* in = batch.input_ids.data() + j * T;
    QAD_CHECK(hash == row_hash(in, T) && sample == batch.sample_ids[static_cast<size_t>(j)],
              "--teacher-cache {}: cached row {} (epoch {}, step {}, row {} of rank {}) is not the row this run "
              "trains on (sample {} vs {}, input hash differs: {}); the cache was built for other data or another "
              "order: rebuild it with this run's settings", dir_.string(), g, batch.epoch, batch.step, j, o.rank,
              sample, batch.sample_ids[static_cast<size_t>(j)], hash != row_hash(in, T) ? "yes" : "no");
    std::memcpy(lse.data_ptr<float>() + j * T, r + kRowHeader, static_cast<size_t>(4 * T));
    const char* at = r + kRowHeader + 4 * T;
    std::memcpy(static_cast<char*>(values.data_ptr()) + j * T * K * vsize, at, static_cast<size_t>(T * K * vsize));
    at += T * K * vsize;
    std::memcpy(ids.data_ptr<int32_t>() + j * T * K, at, static_cast<size_t>(T * K * 4));
    at += T * K * 4;
    if (layer_at.empty()) continue;
    const auto* pos = reinterpret_cast<const int32_t*>(at);
    std::vector<int32_t> positions(pos, pos + count);
    for (const int32_t p : positions) index.push_back(j * T + p);
    at += 4 * P;
    for (size_t li = 0; li < layer_at.size(); ++li) {
      const char* h = at + layer_at[li] * P * H * vsize;
      auto t = torch::empty({count, H}, vopt);
      std::memcpy(t.data_ptr(), h, static_cast<size_t>(count * H * vsize));
      hidden[li].push_back(t);
    }
  }
  auto out = std::make_shared<loss::TeacherTargets>();
  if (k < K) {
    values = values.narrow(2, 0, k).contiguous();
    ids = ids.narrow(2, 0, k).contiguous();
  }
  out->top_logits = values.to(device);
  out->top_ids = ids.to(device).to(torch::kInt64);  // int32 over the bus, widened there
  out->lse = lse.to(device);
  if (!layer_at.empty()) {
    out->cka_index = torch::tensor(index, torch::kLong).to(device);
    for (size_t li = 0; li < layer_at.size(); ++li) {
      out->cka_hidden.emplace_back(cka_layers[li], torch::cat(hidden[li]).to(device));
    }
  }
  return out;
}

}  // namespace qad::train
