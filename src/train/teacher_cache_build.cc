// Building a teacher cache (see teacher_cache_build.h): the loader of the global batch, one teacher forward per
// data.batch_size rows, the top-k and logsumexp of every position, the CKA rows of a fixed per-row subsample.
#include "train/teacher_cache_build.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "checkpoint/load.h"
#include "data/batch_tensors.h"
#include "data/shuffle.h"
#include "loss/logit_losses.h"
#include "model/context_length.h"
#include "model/device.h"
#include "train/data_source.h"
#include "train/step.h"
#include "train/teacher_cache.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/progress.h"

namespace qad::train {
namespace fs = std::filesystem;
namespace {

constexpr uint64_t kCkaStream = 0x434b41;  // mix_seed purpose of the CKA positions

torch::ScalarType value_dtype(const std::string& s, torch::ScalarType model_dtype) {
  if (s == "auto") return model_dtype;
  if (s == "bfloat16" || s == "bf16") return torch::kBFloat16;
  if (s == "float16" || s == "fp16") return torch::kFloat16;
  if (s == "float32" || s == "fp32") return torch::kFloat32;
  fail("--values {}: choose auto (the teacher's dtype, lossless), bfloat16, float16 or float32", s);
}

// The CKA positions of global row g: `count` of its `valid` positions, drawn by a stream of (seed, g) — fixed at
// build time, the same whichever rank later trains on the row — in ascending order.
std::vector<int32_t> cka_positions(const std::vector<int32_t>& valid, int64_t count, uint64_t seed, int64_t g) {
  std::vector<int32_t> p = valid;
  data::SplitMix rng(data::mix_seed(seed, static_cast<uint64_t>(g), kCkaStream));
  const auto n = static_cast<int64_t>(p.size());
  count = std::min(count, n);
  for (int64_t i = 0; i < count; ++i) {
    const auto j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - i)));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  p.resize(static_cast<size_t>(count));
  std::sort(p.begin(), p.end());
  return p;
}

template <typename T>
void put(std::string& s, size_t& at, const T& v) {
  std::memcpy(s.data() + at, &v, sizeof(T));
  at += sizeof(T);
}

}  // namespace

TeacherCacheSummary build_teacher_cache(const TrainConfig& cfg_in, const TeacherCacheOptions& opt) {
  QAD_CHECK(opt.top_k > 0, "--top-k {}: must be > 0", opt.top_k);
  QAD_CHECK(opt.ranks >= 1, "--ranks {}: must be >= 1", opt.ranks);
  QAD_CHECK(opt.compression_level >= 0 && opt.compression_level <= 19, "--compression {}: a zstd level in [0, 19] "
            "(0 = none)", opt.compression_level);
  QAD_CHECK(opt.shard_mb > 0, "--shard-mb {}: must be > 0", opt.shard_mb);
  QAD_CHECK(cfg_in.method == Method::kQad || cfg_in.method == Method::kCkaQad, "qad teacher-cache: the cache serves "
            "qad and cka-qad; --method {} uses no teacher logits", method_name(cfg_in.method));
  // The loader of the whole global batch on one process: its rows in order are the union of the ranks' rows.
  TrainConfig cfg = cfg_in;
  cfg.dist = {};
  cfg.data.batch_size = cfg_in.data.batch_size * opt.ranks;
  const fs::path out(cfg.run.out);
  fs::create_directories(out);
  auto loaders = make_loaders(cfg);
  data::Loader& loader = *loaders.train;
  const auto device = model::parse_device(cfg.run.device);
  const auto model_dtype = model::CausalLM::default_dtype(device);
  auto teacher = checkpoint::load_model(cfg.run.teacher, device, model_dtype);
  teacher->eval();
  model::warn_beyond_context(teacher->config(), cfg.data.seq_len, "--seq-len", cfg.run.teacher);

  TeacherCacheManifest m;
  auto& l = m.layout;
  l.seq_len = cfg.data.seq_len;
  l.top_k = std::min(opt.top_k, teacher->config().vocab_size);
  l.value_dtype = value_dtype(opt.values, model_dtype);
  m.logits_dtype = cache_dtype_name(model_dtype);
  const bool cka = cfg.loss.cka > 0;
  if (cka) {
    l.cka_layers = cfg.loss.cka_layers.empty() ? default_cka_layers(teacher->config()) : cfg.loss.cka_layers;
    const int64_t sub = cfg.loss.cka_subsample_tokens;
    l.cka_tokens_per_row = cka_tokens_per_row(sub, cfg_in.data.batch_size, l.seq_len);
    l.hidden_size = teacher->config().hidden_size;
    m.cka_subsample_tokens = sub;
    m.cka_seed = cfg.run.seed;
  }
  m.global_batch = cfg.data.batch_size;
  m.rows_per_epoch = loader.steps_per_epoch() * m.global_batch;
  m.rows = cfg.run.steps * cfg.optim.grad_accum * m.global_batch;
  m.data_seed = cfg.data.seed;
  m.loader = cache_loader_key(loader);
  m.teacher = cfg.run.teacher;
  m.teacher_config_hash = teacher_config_hash(cfg.run.teacher);
  m.compression_level = opt.compression_level;
  const int64_t row_bytes = l.row_bytes();
  const auto batches_per_shard = std::max<int64_t>(
      1, static_cast<int64_t>(opt.shard_mb * 1048576.0 / static_cast<double>(row_bytes * m.global_batch)));
  m.rows_per_shard = batches_per_shard * m.global_batch;
  QAD_CHECK(m.rows > 0, "qad teacher-cache: --steps {} caches no rows", cfg.run.steps);

  // A manifest already there must describe the same cache (then its finished shards are kept); else refuse.
  const auto manifest_path = out / "manifest.json";
  if (fs::exists(manifest_path)) {
    auto old = TeacherCacheManifest::from_json(nlohmann::json::parse(read_file(manifest_path)), manifest_path.string());
    auto a = old.to_json(), b = m.to_json();
    for (auto* j : {&a, &b}) {
      j->erase("complete");
      j->erase("stats");
    }
    QAD_CHECK(a == b, "{}: holds a teacher cache built with other settings; choose another --out or delete it",
              out.string());
  }
  write_file_atomic(manifest_path, m.to_json().dump(2) + "\n");

  const int64_t shards = (m.rows + m.rows_per_shard - 1) / m.rows_per_shard;
  const int64_t T = l.seq_len, K = l.top_k, P = l.cka_tokens_per_row, H = l.hidden_size;
  const int64_t micro = cfg_in.data.batch_size;
  const int64_t vsize = static_cast<int64_t>(c10::elementSize(l.value_dtype));
  fmt::print("qad teacher-cache: {} → {}: {} rows of {} tokens (global batch {}), top-{} logits as {}{}, {} bytes "
             "per row, {} shards{}\n", cfg.run.teacher, out.string(), m.rows, T, m.global_batch, K,
             c10::toString(l.value_dtype), cka ? fmt::format(", CKA rows of {} layers x {} tokens", l.cka_layers.size(), P)
                                               : std::string(),
             row_bytes, shards, opt.compression_level > 0 ? fmt::format(" (zstd {})", opt.compression_level) : "");
  TeacherCacheSummary sum;
  sum.rows = m.rows;
  sum.row_bytes = row_bytes;
  const auto t0 = std::chrono::steady_clock::now();
  double mass_sum = 0, mass_tokens = 0;
  int64_t disk_bytes = 0;
  Progress progress("teacher-cache", m.rows * T, "tok");
  for (int64_t s = 0; s < shards; ++s) {
    const int64_t first = s * m.rows_per_shard;
    const int64_t n = std::min(m.rows_per_shard, m.rows - first);
    const auto path = shard_path(out, s);
    if (shard_is_complete(path, first, n, row_bytes)) {
      progress.advance(n * T, "kept");
      continue;
    }
    // Position the loader at the shard's first global batch (epoch, step).
    data::LoaderState at = loader.state();
    const int64_t batch_index = first / m.global_batch;
    at.epoch = batch_index / loader.steps_per_epoch();
    at.step = batch_index % loader.steps_per_epoch();
    loader.restore(at);
    std::string raw(static_cast<size_t>(n * row_bytes), '\0');
    for (int64_t done = 0; done < n; done += m.global_batch) {
      const data::Batch batch = loader.next();
      QAD_CHECK(batch.batch == m.global_batch, "qad teacher-cache: a batch of {} rows where {} were expected",
                batch.batch, m.global_batch);
      const auto bt = data::to_tensors(batch, device);
      for (int64_t j0 = 0; j0 < batch.batch; j0 += micro) {
        const int64_t b = std::min(micro, batch.batch - j0);
        torch::NoGradGuard ng;
        model::ForwardOptions fo;
        auto mask = bt.attention_mask.narrow(0, j0, b);
        // As the training step: the attention mask only where the micro-batch has padding.
        if (data::has_padding(batch, j0, b)) fo.attention_mask = mask;
        std::vector<std::vector<int32_t>> pos(static_cast<size_t>(b));
        if (cka) {
          auto mask_cpu = mask.to(torch::kCPU).contiguous();
          std::vector<int64_t> index;
          for (int64_t r = 0; r < b; ++r) {
            std::vector<int32_t> valid;
            const bool* mr = mask_cpu.data_ptr<bool>() + r * T;
            for (int32_t t = 0; t < T; ++t) {
              if (mr[t]) valid.push_back(t);
            }
            pos[static_cast<size_t>(r)] = cka_positions(valid, P, m.cka_seed, done + first + j0 + r);
            for (const int32_t p : pos[static_cast<size_t>(r)]) index.push_back(r * T + p);
          }
          fo.return_hidden = true;
          fo.hidden_rows = torch::tensor(index, torch::kLong).to(device);
        }
        auto t_out = teacher->forward(bt.input_ids.narrow(0, j0, b), fo);
        auto [top, ids] = loss::teacher_top_k(t_out.logits, K);
        auto lse = loss::teacher_logsumexp(t_out.logits).to(torch::kFloat32);  // the live tail KL's very call
        {  // the top-k mass over trained tokens: how much of the teacher's distribution the cache keeps
          auto mass = (top.to(torch::kFloat32) - lse.unsqueeze(-1)).exp().sum(-1);
          auto lm = bt.loss_mask.narrow(0, j0, b);
          mass_sum += (mass * lm).sum().item<double>();
          mass_tokens += lm.sum().item<double>();
        }
        top = top.to(torch::kCPU, l.value_dtype).contiguous();
        ids = ids.to(torch::kCPU, torch::kInt32).contiguous();
        lse = lse.to(torch::kCPU).contiguous();
        std::vector<torch::Tensor> hidden;
        for (const auto& name : l.cka_layers) {
          auto it = std::find_if(t_out.hidden.begin(), t_out.hidden.end(), [&](const auto& h) { return h.first == name; });
          QAD_CHECK(it != t_out.hidden.end(), "qad teacher-cache: the teacher has no hidden state '{}' (--cka-layers)",
                    name);
          hidden.push_back(it->second.to(torch::kCPU, l.value_dtype).contiguous());
        }
        int64_t hidden_at = 0;  // the micro-batch's CKA rows are consecutive in `index` order
        for (int64_t r = 0; r < b; ++r) {
          const int64_t j = j0 + r;
          size_t at_byte = static_cast<size_t>((done + j) * row_bytes);
          const auto& p = pos[static_cast<size_t>(r)];
          const auto count = static_cast<int32_t>(p.size());
          put(raw, at_byte, row_hash(batch.input_ids.data() + j * T, T));
          put(raw, at_byte, batch.sample_ids[static_cast<size_t>(j)]);
          put(raw, at_byte, count);
          put(raw, at_byte, int32_t{0});
          std::memcpy(raw.data() + at_byte, lse.data_ptr<float>() + r * T, static_cast<size_t>(4 * T));
          at_byte += static_cast<size_t>(4 * T);
          std::memcpy(raw.data() + at_byte, static_cast<const char*>(top.data_ptr()) + r * T * K * vsize,
                      static_cast<size_t>(T * K * vsize));
          at_byte += static_cast<size_t>(T * K * vsize);
          std::memcpy(raw.data() + at_byte, ids.data_ptr<int32_t>() + r * T * K, static_cast<size_t>(4 * T * K));
          at_byte += static_cast<size_t>(4 * T * K);
          if (!cka) continue;
          std::vector<int32_t> padded(static_cast<size_t>(P), -1);
          std::copy(p.begin(), p.end(), padded.begin());
          std::memcpy(raw.data() + at_byte, padded.data(), static_cast<size_t>(4 * P));
          at_byte += static_cast<size_t>(4 * P);
          for (const auto& h : hidden) {  // unused rows stay 0
            std::memcpy(raw.data() + at_byte, static_cast<const char*>(h.data_ptr()) + hidden_at * H * vsize,
                        static_cast<size_t>(count * H * vsize));
            at_byte += static_cast<size_t>(P * H * vsize);
          }
          hidden_at += count;
        }
      }
      progress.advance(m.global_batch * T);
      sum.rows_computed += m.global_batch;
    }
    write_shard(path, first, n, row_bytes, raw, opt.compression_level);
    disk_bytes += static_cast<int64_t>(fs::file_size(path));
  }
  progress.finish();
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  sum.tokens = sum.rows * T;
  sum.topk_mass = mass_tokens > 0 ? mass_sum / mass_tokens : 0;
  sum.bytes_per_token = sum.rows_computed > 0 ? static_cast<double>(disk_bytes) / static_cast<double>(sum.rows_computed * T)
                                              : 0;
  m.complete = true;
  m.stats = {{"seconds", sum.seconds}, {"rows_computed", sum.rows_computed}, {"topk_mass", sum.topk_mass},
             {"bytes_per_token_raw", static_cast<double>(row_bytes) / static_cast<double>(T)},
             {"bytes_per_token_disk", sum.bytes_per_token}};
  write_file_atomic(manifest_path, m.to_json().dump(2) + "\n");
  return sum;
}

}  // namespace qad::train
