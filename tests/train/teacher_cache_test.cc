// The teacher cache (train/teacher_cache.h) on stories260K, CPU, seconds: the cached rows are the teacher's own
// top-k logits, logsumexp and hidden rows of the rows the loader gives; a training step from the cache equals the
// live teacher's top-k step bit for bit (loss, KL, every gradient), the CKA term from the cache equals the live
// CKA on the same tokens, a whole `qad distill` run from the cache logs the live top-k run's losses exactly; ranks
// read rows by global index; mismatched runs and damaged shards are refused; a stopped build resumes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "checkpoint/load.h"
#include "common/test_util.h"
#include "data/batch_tensors.h"
#include "loss/cka_loss.h"
#include "loss/logit_losses.h"
#include "train/data_source.h"
#include "train/step.h"
#include "train/teacher_cache.h"
#include "train/teacher_cache_build.h"
#include "train/trainer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/remove_tree.h"

namespace qad::train {
namespace {
namespace fs = std::filesystem;
using qad::testing::same_bits;
using qad::testing::shared_dir;

fs::path teacher_dir() { return shared_dir() / "models/stories260K"; }

class TeacherCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("qad_tcache_test_" + std::to_string(::getpid()));
    remove_tree(root_);
    fs::create_directories(root_);
    std::mt19937 rng(99);
    const std::vector<std::string> names = {"Lily", "Tom", "Sue", "Ben", "Mia"};
    const std::vector<std::string> things = {"ball", "cat", "tree", "cake", "boat", "dog"};
    std::ofstream f(root_ / "stories.jsonl");
    for (int d = 0; d < 160; ++d) {
      auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
      const std::string a = pick(names), t = pick(things);
      // Documents of different lengths: pad mode then has padded rows.
      std::string text = "Once upon a time, " + a + " had a " + t + ".";
      for (int i = 0; i < static_cast<int>(rng() % 4); ++i) text += " " + a + " played with the " + pick(things) + ".";
      f << "{\"text\": \"" << text << "\"}\n";
    }
    f.close();
    data_ = resolve_dataset((root_ / "stories.jsonl").string(), teacher_dir(), root_, "train", 0.1);
  }
  static void TearDownTestSuite() { remove_tree(root_); }

  // A qad configuration of 3 steps x 2 micro-batches of 4 rows x 16 tokens.
  static TrainConfig config(const std::string& out, Method method = Method::kQad) {
    TrainConfig c = defaults_for(method);
    c.method = method;
    c.run.teacher = teacher_dir().string();
    c.run.out = (root_ / out).string();
    c.run.device = "cpu";
    c.run.steps = 3;
    c.run.seed = 5;
    c.data.path = data_.string();
    c.data.seq_len = 16;
    c.data.batch_size = 4;
    c.data.seed = 3;
    c.data.valid_fraction = 0;  // no validation split (too small here)
    c.optim.grad_accum = 2;
    c.loss.log_ce = false;
    c.loss.cka_subsample_tokens = 12;  // 3 per row
    return c;
  }

  static TeacherCacheOptions options(int64_t k = 8) {
    TeacherCacheOptions o;
    o.top_k = k;
    o.shard_mb = 0.005;  // one global batch per shard: several shards even here
    return o;
  }

  // The train loader a distill run of `c` on `rank` of `world` ranks has.
  static std::unique_ptr<data::Loader> loader(TrainConfig c, int rank = 0, int world = 1) {
    c.dist.rank = rank;
    c.dist.world_size = world;
    return std::move(make_loaders(c).train);
  }

  static model::CausalLM teacher() {
    auto t = checkpoint::load_model(teacher_dir(), torch::kCPU, torch::kFloat32);
    t->eval();
    return t;
  }

  static inline fs::path root_, data_;
};

TEST_F(TeacherCacheTest, RowsAreTheTeachersTopKLogsumexpAndShardsRoundTrip) {
  auto cfg = config("cache_rt");
  const auto s = build_teacher_cache(cfg, options(8));
  EXPECT_EQ(s.rows, 3 * 2 * 4);
  EXPECT_EQ(s.rows_computed, s.rows);
  EXPECT_GT(s.topk_mass, 0.3);
  EXPECT_LE(s.topk_mass, 1.0 + 1e-6);
  TeacherCache cache(cfg.run.out);
  ASSERT_TRUE(cache.manifest().complete);
  EXPECT_GT(fs::file_size(shard_path(cfg.run.out, 1)), 0u) << "small shards: expected several";
  cache.check_run(cfg, *loader(cfg));
  auto l = loader(cfg);
  auto t = teacher();
  torch::NoGradGuard ng;
  for (int i = 0; i < 6; ++i) {
    const auto b = l->next();
    const auto bt = data::to_tensors(b);
    auto got = cache.targets(b, l->options(), torch::kCPU, 0, {});
    auto logits = t->forward(bt.input_ids).logits;
    auto [top, ids] = loss::teacher_top_k(logits, 8);
    EXPECT_TRUE(same_bits(got->top_logits, top)) << "batch " << i;
    EXPECT_TRUE(same_bits(got->top_ids, ids)) << "batch " << i;
    EXPECT_TRUE(same_bits(got->lse, loss::teacher_logsumexp(logits))) << "batch " << i;  // what the tail KL reads
    EXPECT_FALSE(got->cka_index.defined());
    // A smaller k is the prefix of the cached (descending) list: the live top-k of that k.
    auto got3 = cache.targets(b, l->options(), torch::kCPU, 3, {});
    auto [top3, ids3] = loss::teacher_top_k(logits, 3);
    EXPECT_TRUE(same_bits(got3->top_logits, top3));
    EXPECT_TRUE(same_bits(got3->top_ids, ids3));
  }
  // The stored logsumexp: top-k log-probabilities are logits - lse (checked on the first row's first position).
  const auto raw = read_shard(shard_path(cfg.run.out, 0), 0, cache.manifest().rows_per_shard,
                              cache.manifest().layout.row_bytes());
  float lse0 = 0;
  std::memcpy(&lse0, raw.data() + 24, 4);
  auto l0 = loader(cfg);
  const auto b0 = l0->next();
  auto lse_ref = torch::logsumexp(t->forward(data::to_tensors(b0).input_ids).logits[0][0], 0).item<float>();
  EXPECT_NEAR(lse0, lse_ref, 1e-5);
}

// Both top-k KLs: renormalised, and with the tail category (the cached logsumexp against the live one).
TEST_F(TeacherCacheTest, StepFromTheCacheEqualsTheLiveTopKStepBitForBit) {
  auto cfg = config("cache_step");
  build_teacher_cache(cfg, options(8));
  TeacherCache cache(cfg.run.out);
  auto t = teacher();
  cfg.loss.top_k = 5;  // a k below the cache's: its prefix
  std::vector<double> kl_of_variant;
  for (const bool tail : {false, true}) {
    cfg.loss.top_k_tail = tail;
    auto l = loader(cfg);
    for (int step = 0; step < 2; ++step) {
      std::vector<data::BatchTensors> live, cached;
      for (int i = 0; i < 2; ++i) {
        const auto b = l->next();
        live.push_back(data::to_tensors(b));
        cached.push_back(data::to_tensors(b));
        cached.back().teacher = cache.targets(b, l->options(), torch::kCPU, cfg.loss.top_k, {});
      }
      auto s1 = checkpoint::load_model(teacher_dir(), torch::kCPU, torch::kFloat32);
      auto s2 = checkpoint::load_model(teacher_dir(), torch::kCPU, torch::kFloat32);
      {  // a student away from the teacher
        torch::NoGradGuard ng;
        auto gen = qad::testing::seeded_generator(step);
        auto p1 = s1->parameters(), p2 = s2->parameters();
        for (size_t i = 0; i < p1.size(); ++i) {
          auto noise = torch::randn(p1[i].sizes(), gen) * 0.02;
          p1[i].add_(noise);
          p2[i].add_(noise);
        }
      }
      for (auto* m : {&s1, &s2}) {
        for (auto& p : (*m)->parameters()) p.set_requires_grad(true);
      }
      const auto a = accumulate_gradients(s1, &t, live, cfg, 11);
      const auto c = accumulate_gradients(s2, nullptr, cached, cfg, 11);
      ASSERT_TRUE(a.kl && c.kl);
      EXPECT_GT(*a.kl, 1e-4);
      EXPECT_EQ(*a.kl, *c.kl) << "step " << step << (tail ? ", tail" : "");
      EXPECT_EQ(a.loss, c.loss);
      if (step == 0) kl_of_variant.push_back(*a.kl);
      auto p1 = s1->parameters(), p2 = s2->parameters();
      for (size_t i = 0; i < p1.size(); ++i) {
        ASSERT_TRUE(p1[i].grad().defined());
        EXPECT_TRUE(same_bits(p1[i].grad(), p2[i].grad())) << "parameter " << i << (tail ? ", tail" : "");
      }
    }
  }
  ASSERT_EQ(kl_of_variant.size(), 2u);
  EXPECT_GT(std::abs(kl_of_variant[1] - kl_of_variant[0]), 1e-4) << "the tail KL is another objective";
}

TEST_F(TeacherCacheTest, CkaFromTheCacheEqualsLiveCkaOnTheSameTokens) {
  auto cfg = config("cache_cka", Method::kCkaQad);
  cfg.data.mode = "pad";  // padded rows: positions only among real tokens
  build_teacher_cache(cfg, options(8));
  TeacherCache cache(cfg.run.out);
  cache.check_run(cfg, *loader(cfg));
  const auto& m = cache.manifest();
  EXPECT_EQ(m.layout.cka_tokens_per_row, 3);
  const auto layers = default_cka_layers(teacher()->config());
  EXPECT_EQ(m.layout.cka_layers, layers);
  auto l = loader(cfg);
  auto t = teacher();
  auto s = checkpoint::load_model(teacher_dir(), torch::kCPU, torch::kFloat32);
  {
    torch::NoGradGuard ng;
    auto gen = qad::testing::seeded_generator(7);
    for (auto& p : s->parameters()) p.add_(torch::randn(p.sizes(), gen) * 0.05);
  }
  std::set<int64_t> seen_positions;
  for (int i = 0; i < 3; ++i) {
    const auto b = l->next();
    auto bt = data::to_tensors(b);
    bt.teacher = cache.targets(b, l->options(), torch::kCPU, 0, layers);
    const auto& idx = bt.teacher->cka_index;
    ASSERT_TRUE(idx.defined());
    // Every chosen position is a real token, ascending, 3 per row (or all of a shorter row).
    auto flat_mask = bt.attention_mask.reshape({-1});
    EXPECT_TRUE(flat_mask.index_select(0, idx).all().item<bool>());
    EXPECT_TRUE((idx.slice(0, 1) > idx.slice(0, 0, -1)).all().item<bool>());
    for (int64_t k = 0; k < idx.size(0); ++k) seen_positions.insert(idx[k].item<int64_t>() % 16);
    // Reference: both models' hidden rows at those tokens, the CKA term computed directly.
    torch::NoGradGuard ng;
    model::ForwardOptions fo;
    fo.return_hidden = true;
    fo.hidden_rows = idx;
    if (!bt.attention_mask.all().item<bool>()) fo.attention_mask = bt.attention_mask;
    auto th = t->forward(bt.input_ids, fo).hidden;
    auto sh = s->forward(bt.input_ids, fo).hidden;
    for (const auto& [name, rows] : bt.teacher->cka_hidden) {
      auto it = std::find_if(th.begin(), th.end(), [&](const auto& h) { return h.first == name; });
      ASSERT_NE(it, th.end());
      EXPECT_TRUE(same_bits(rows, it->second)) << name;
    }
    loss::CkaLossOptions co;
    co.weight = cfg.loss.cka;
    co.layers = layers;
    co.read_values = true;
    const auto ref = loss::cka_loss_on_tokens(th, sh, co);
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(1);
    const auto got = compute_losses(s, nullptr, bt, cfg.loss, false, &gen);
    ASSERT_EQ(got.values.cka.size(), layers.size());
    for (size_t li = 0; li < layers.size(); ++li) {
      EXPECT_NEAR(got.values.cka[li].second, ref.per_layer_cka[li].second, 1e-6) << layers[li];
    }
    EXPECT_GT(1 - ref.per_layer_cka.back().second, 1e-5) << "the student should differ from the teacher";
  }
  EXPECT_GT(seen_positions.size(), 6u) << "positions spread over the row";
}

TEST_F(TeacherCacheTest, RanksReadTheirRowsByGlobalIndex) {
  // Built for 1 rank x 4 rows x 2 micro-batches; read by 2 ranks x 2 rows and 4 ranks x 1 row (the same global
  // batch), and by 1 rank x 2 rows x 4 micro-batches (another global batch, the same rows per epoch: the loader's
  // epoch order does not depend on the batch).
  auto cfg = config("cache_ranks");
  build_teacher_cache(cfg, options(4));
  TeacherCache cache(cfg.run.out);
  ASSERT_LT(loader(cfg)->samples_per_epoch() % 4, 2) << "the 2-row split needs the same rows per epoch";
  auto t = teacher();
  torch::NoGradGuard ng;
  for (const auto& [world, rows] : std::vector<std::pair<int, int64_t>>{{2, 2}, {4, 1}, {1, 2}}) {
    auto c = cfg;
    c.data.batch_size = rows;
    c.optim.grad_accum = 8 / (world * rows);
    for (int rank = 0; rank < world; ++rank) {
      auto l = loader(c, rank, world);
      c.dist.rank = rank;
      c.dist.world_size = world;
      cache.check_run(c, *l);
      for (int i = 0; i < 4; ++i) {
        const auto b = l->next();
        auto got = cache.targets(b, l->options(), torch::kCPU, 0, {});
        auto [top, ids] = loss::teacher_top_k(t->forward(data::to_tensors(b).input_ids).logits, 4);
        EXPECT_TRUE(same_bits(got->top_ids, ids)) << world << " ranks, rank " << rank << ", batch " << i;
        EXPECT_TRUE(torch::allclose(got->top_logits, top, 1e-5, 1e-5));  // (another forward batch: rounding)
      }
    }
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST_F(TeacherCacheTest, CkaRowsServeOtherRankSplitsButNotAnotherMicroBatch) {
  // Built for micro-batches of 4 rows (3 CKA tokens each, of the 12-token subsample) x 2 accumulated.
  auto cfg = config("cache_cka_split", Method::kCkaQad);
  build_teacher_cache(cfg, options(4));
  TeacherCache cache(cfg.run.out);
  auto c = cfg;  // 2 ranks x 4 rows, 1 micro-batch per step: the same micro-batch size and rows per step
  c.dist.world_size = 2;
  c.optim.grad_accum = 1;
  EXPECT_NO_THROW(cache.check_run(c, *loader(c, 0, 2)));
  c = cfg;  // micro-batches of 2 rows would need 6 tokens per row
  c.data.batch_size = 2;
  c.optim.grad_accum = 4;
  const auto msg = error_of([&] { cache.check_run(c, *loader(c)); });
  EXPECT_NE(msg.find("holds 3 CKA tokens per row"), std::string::npos) << msg;
  EXPECT_NE(msg.find("micro-batches of 2 rows need 6 per row"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rebuild the cache with --batch-size 2"), std::string::npos) << msg;
}

TEST_F(TeacherCacheTest, MismatchedRunsAndDamagedShardsAreRefused) {
  auto cfg = config("cache_bad");
  build_teacher_cache(cfg, options(8));
  TeacherCache cache(cfg.run.out);
  auto expect = [&](TrainConfig c, const std::string& what) {
    EXPECT_NE(error_of([&] { cache.check_run(c, *loader(c, c.dist.rank, c.dist.world_size)); }).find(what),
              std::string::npos) << what;
  };
  auto c = cfg;
  c.data.seed = 4;
  expect(c, "data.seed 3 but this run has 4");
  c = cfg;
  c.data.seq_len = 32;
  expect(c, "data.seq_len 16 but this run has 32");
  // A global batch that leaves another number of rows per epoch (the last partial batch is dropped).
  c = cfg;
  const int64_t samples = loader(cfg)->samples_per_epoch();
  c.data.batch_size = 5;
  while (samples / c.data.batch_size * c.data.batch_size == samples / 4 * 4) ++c.data.batch_size;
  c.optim.grad_accum = 1;
  c.run.steps = 1;
  expect(c, "built for a global batch of 4 rows (data.batch_size x ranks), " + std::to_string(samples / 4 * 4) +
                " rows per epoch, but this run's global batch of " + std::to_string(c.data.batch_size) + " rows");
  c = cfg;
  c.data.mode = "pad";
  expect(c, "loader setting mode");
  c = cfg;
  c.run.steps = 4;
  expect(c, "rebuild it with --steps 4 or run at most 3 steps");
  c = cfg;
  c.loss.top_k = 9;
  expect(c, "top 8 logits but loss.top_k is 9");
  c = cfg;
  c.method = Method::kCkaQad;
  c.loss.cka = 0.1;
  expect(c, "holds no hidden states");
  c = cfg;
  c.method = Method::kQat;
  expect(c, "method qat does not use one");
  c = cfg;
  c.loss.top_k_tail = true;
  c.loss.temperature = 2;
  expect(c, "loss.top_k_tail needs the teacher's logsumexp at the run's temperature");
  expect(c, "run with --temperature 1, or without --top-k-tail");
  c.loss.temperature = 1;  // the cache's logsumexp is at T = 1
  EXPECT_NO_THROW(cache.check_run(c, *loader(c)));
  c.loss.top_k_tail = false;
  c.loss.temperature = 2;  // the renormalised top-k KL needs no logsumexp
  EXPECT_NO_THROW(cache.check_run(c, *loader(c)));

  // The tail category needs exact logits: a cache of the FP32 teacher's logits rounded to BF16 is refused for it
  // (and still serves the renormalised KL), and so is a cache whose manifest predates the logits dtype.
  ASSERT_EQ(cache.manifest().logits_dtype, "float32");
  auto narrow = config("cache_bf16_values");
  auto narrow_options = options(8);
  narrow_options.values = "bfloat16";
  build_teacher_cache(narrow, narrow_options);
  {
    TeacherCache rounded(narrow.run.out);
    c = narrow;
    EXPECT_NO_THROW(rounded.check_run(c, *loader(c)));
    c.loss.top_k_tail = true;
    const auto msg = error_of([&] { rounded.check_run(c, *loader(c)); });
    EXPECT_NE(msg.find("holds the teacher's float32 logits rounded to bfloat16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rebuild it with --values auto or float32, or train without --top-k-tail"), std::string::npos)
        << msg;
  }
  {
    auto m = nlohmann::json::parse(read_file(fs::path(cfg.run.out) / "manifest.json"));
    m.erase("logits_dtype");
    std::ofstream(fs::path(cfg.run.out) / "manifest.json") << m.dump();
    TeacherCache old_cache(cfg.run.out);
    c = cfg;
    EXPECT_NO_THROW(old_cache.check_run(c, *loader(c)));
    c.loss.top_k_tail = true;
    EXPECT_NE(error_of([&] { old_cache.check_run(c, *loader(c)); }).find("built before caches recorded the teacher's "
                                                                          "logits dtype"),
              std::string::npos);
  }

  // A row that is not the cached one (another shuffle, the check bypassed): the hash check refuses it.
  c = cfg;
  c.data.seed = 4;
  auto other = loader(c);
  const auto b = other->next();
  EXPECT_NE(error_of([&] { cache.targets(b, other->options(), torch::kCPU, 0, {}); }).find("is not the row this run"),
            std::string::npos);

  // A truncated shard: named, with the fix.
  const auto p = shard_path(cfg.run.out, 0);
  fs::resize_file(p, fs::file_size(p) - 10);
  TeacherCache damaged(cfg.run.out);
  auto l = loader(cfg);
  const auto b0 = l->next();
  const auto msg = error_of([&] { damaged.targets(b0, l->options(), torch::kCPU, 0, {}); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find(p.filename().string()), std::string::npos) << msg;

  // An unfinished build is refused as a whole.
  auto j = nlohmann::json::parse(read_file(fs::path(cfg.run.out) / "manifest.json"));
  j["complete"] = false;
  std::ofstream(fs::path(cfg.run.out) / "manifest.json") << j.dump();
  EXPECT_NE(error_of([&] { TeacherCache x(cfg.run.out); }).find("incomplete"), std::string::npos);
}

TEST_F(TeacherCacheTest, AStoppedBuildResumesWithTheSameRows) {
  auto cfg = config("cache_resume");
  build_teacher_cache(cfg, options(8));
  const auto p1 = shard_path(cfg.run.out, 1);
  const auto before = read_file(p1);
  fs::remove(p1);
  const auto s = build_teacher_cache(cfg, options(8));
  EXPECT_GT(s.rows_computed, 0);
  EXPECT_LT(s.rows_computed, s.rows);
  EXPECT_EQ(read_file(p1), before);
  // Another k into the same directory is refused.
  EXPECT_NE(error_of([&] { build_teacher_cache(cfg, options(4)); }).find("other settings"), std::string::npos);
}

// A whole qad distill run from the cache logs the live top-k run's losses exactly (the trainer's wiring: rows,
// ranks' loader options, the top-k prefix, the logsumexp of the tail KL), with and without the tail category.
TEST_F(TeacherCacheTest, DistillRunFromTheCacheLogsTheLiveTopKRun) {
  auto base = config("unused");
  base.loss.top_k = 6;
  base.run.valid_batches = 0;
  base.run.checkpoint_every = -1;
  base.run.export_nvfp4 = false;
  base.quant.calib_batches = 1;
  base.optim.lr = 1e-3;
  auto cache_cfg = base;
  cache_cfg.run.out = (root_ / "cache_run").string();
  build_teacher_cache(cache_cfg, options(8));
  for (const bool tail : {false, true}) {
    base.loss.top_k_tail = tail;
    const std::string suffix = tail ? "_tail" : "";
    auto live = base;
    live.run.out = (root_ / ("run_live" + suffix)).string();
    auto cached = base;
    cached.run.out = (root_ / ("run_cached" + suffix)).string();
    cached.run.teacher_cache = cache_cfg.run.out;
    run_training(live, false);
    run_training(cached, false);
    auto read = [](const std::string& dir) {
      std::vector<nlohmann::json> steps;
      std::ifstream f(fs::path(dir) / "metrics.jsonl");
      std::string line;
      while (std::getline(f, line)) {
        auto j = nlohmann::json::parse(line);
        if (j.contains("kl") && j.contains("grad_norm")) steps.push_back(j);
      }
      return steps;
    };
    const auto a = read(live.run.out), b = read(cached.run.out);
    ASSERT_EQ(a.size(), 3u);
    ASSERT_EQ(b.size(), 3u);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i]["kl"], b[i]["kl"]) << "step " << i + 1 << suffix;
      EXPECT_EQ(a[i]["loss"], b[i]["loss"]) << "step " << i + 1 << suffix;
      EXPECT_EQ(a[i]["grad_norm"], b[i]["grad_norm"]) << "step " << i + 1 << suffix;
    }
  }
}

}  // namespace
}  // namespace qad::train
