// Loader: batches against streams rebuilt independently from the generated documents, determinism by
// seed, exact resume (pack and pad, two ranks, across epochs), rank disjointness, the validation split,
// chat masks in batches and damaged shards.
#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "util/remove_tree.h"
#include "byte_encoder.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data_test_util.h"

namespace qad::data {
namespace {
namespace fs = std::filesystem;
using qad::testing::ByteEncoder;

// 300 documents: text of 1..120 bytes and, every 4th, a chat; the expected token stream of each is built
// here from the strings, not read back from the dataset.
class LoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() / ("qad-loader-test-" + std::to_string(::getpid())));
    ::qad::remove_tree(*dir_);
    fs::create_directories(*dir_);
    std::mt19937_64 rng(qad::testing::data_test_seed());
    docs_ = new std::vector<std::vector<int32_t>>;
    masks_ = new std::vector<std::vector<uint8_t>>;
    std::string jsonl;
    for (int i = 0; i < 300; ++i) {
      std::string text(1 + rng() % 120, ' ');
      for (auto& c : text) c = static_cast<char>('a' + rng() % 26);
      std::vector<int32_t> ids;
      std::vector<uint8_t> mask;
      if (i % 4 == 3) {
        const std::string q = text.substr(0, text.size() / 2), a = text.substr(text.size() / 2);
        jsonl += nlohmann::json{{"messages", {{{"role", "user"}, {"content", q}}, {{"role", "assistant"}, {"content", a}}}}}
                     .dump() + "\n";
        auto put = [&](const std::string& s, uint8_t m) {
          for (unsigned char c : s) ids.push_back(c), mask.push_back(m);
        };
        ids.push_back(ByteEncoder::kImStart), mask.push_back(0);
        put("user\n", 0);
        put(q, 0);
        ids.push_back(ByteEncoder::kImEnd), mask.push_back(0);
        put("\n", 0);
        ids.push_back(ByteEncoder::kImStart), mask.push_back(0);
        put("assistant\n", 0);
        put(a, 1);
        ids.push_back(ByteEncoder::kImEnd), mask.push_back(1);
        put("\n", 0);
      } else {
        jsonl += nlohmann::json{{"text", text}}.dump() + "\n";
        for (unsigned char c : text) ids.push_back(c), mask.push_back(1);
        ids.push_back(ByteEncoder::kEndOfText), mask.push_back(1);
      }
      docs_->push_back(ids);
      masks_->push_back(mask);
    }
    qad::testing::write_bytes(*dir_ / "in.jsonl", jsonl);
    ByteEncoder enc;
    PrepareOptions o;
    o.output = *dir_ / "ds";
    o.progress = false;
    o.valid_fraction = 0.2;
    o.split_seed = 7;
    o.shard_tokens = 4000;  // several shards: windows cross shard boundaries
    prepare_dataset({*dir_ / "in.jsonl"}, enc, o);
  }
  static void TearDownTestSuite() {
    ::qad::remove_tree(*dir_);
    delete dir_;
    delete docs_;
    delete masks_;
  }
  static fs::path ds() { return *dir_ / "ds"; }

  static LoaderOptions opts(PackMode mode, uint64_t seed, int rank = 0, int world = 1) {
    LoaderOptions o;
    o.seq_len = mode == PackMode::pack ? 32 : 48;
    o.batch_size = 4;
    o.mode = mode;
    o.seed = seed;
    o.rank = rank;
    o.world_size = world;
    o.split = Split::all;
    return o;
  }

  static inline fs::path* dir_ = nullptr;
  static inline std::vector<std::vector<int32_t>>* docs_ = nullptr;
  static inline std::vector<std::vector<uint8_t>>* masks_ = nullptr;
};

::testing::AssertionResult same_batch(const Batch& a, const Batch& b) {
  if (a.batch != b.batch || a.seq_len != b.seq_len || a.input_ids != b.input_ids || a.targets != b.targets ||
      a.loss_mask != b.loss_mask || a.attention_mask != b.attention_mask || a.sample_ids != b.sample_ids) {
    return ::testing::AssertionFailure() << "batches differ (epoch " << a.epoch << " step " << a.step << " vs epoch "
                                         << b.epoch << " step " << b.step << ")";
  }
  return ::testing::AssertionSuccess();
}

TEST_F(LoaderTest, PackedWindowsAreTheDocumentStreamInOrderWithoutShuffle) {
  std::vector<int32_t> stream;
  std::vector<uint8_t> mask;
  for (size_t d = 0; d < docs_->size(); ++d) {
    stream.insert(stream.end(), (*docs_)[d].begin(), (*docs_)[d].end());
    mask.insert(mask.end(), (*masks_)[d].begin(), (*masks_)[d].end());
  }
  auto o = opts(PackMode::pack, 0);
  o.shuffle = false;
  o.drop_last = false;
  Loader loader(ds(), o);
  const int64_t T = o.seq_len;
  EXPECT_EQ(loader.samples_per_epoch(), static_cast<int64_t>((stream.size() - 1) / T));
  int64_t window = 0;
  for (int64_t s = 0; s < loader.steps_per_epoch(); ++s) {
    Batch b = loader.next();
    for (int64_t r = 0; r < b.batch; ++r, ++window) {
      ASSERT_EQ(b.sample_ids[r], window);
      for (int64_t t = 0; t < T; ++t) {
        const size_t at = static_cast<size_t>(r * T + t), p = static_cast<size_t>(window * T + t);
        ASSERT_EQ(b.input_ids[at], stream[p]) << "window " << window << " t " << t;
        ASSERT_EQ(b.targets[at], stream[p + 1]);
        ASSERT_EQ(b.loss_mask[at], mask[p + 1]);
        ASSERT_EQ(b.attention_mask[at], 1);
      }
    }
  }
  EXPECT_EQ(window, loader.samples_per_epoch());
}

TEST_F(LoaderTest, PaddedRowsAreOneTruncatedDocumentWithExactMasks) {
  auto o = opts(PackMode::pad, 3);
  o.drop_last = false;
  Loader loader(ds(), o);
  const int64_t T = o.seq_len;
  std::set<int64_t> seen;
  int64_t supervised = 0, expected_supervised = 0;
  for (int64_t s = 0; s < loader.steps_per_epoch(); ++s) {
    Batch b = loader.next();
    for (int64_t r = 0; r < b.batch; ++r) {
      const int64_t d = b.sample_ids[r];
      seen.insert(d);
      const auto& ids = (*docs_)[d];
      const auto& m = (*masks_)[d];
      const int64_t used = std::min<int64_t>(static_cast<int64_t>(ids.size()), T + 1);
      for (int64_t k = 1; k < used; ++k) expected_supervised += m[k];
      for (int64_t t = 0; t < T; ++t) {
        const size_t at = static_cast<size_t>(r * T + t);
        const bool real = t + 1 < used;
        ASSERT_EQ(b.attention_mask[at], real ? 1 : 0);
        ASSERT_EQ(b.input_ids[at], real ? ids[t] : o.pad_id);
        ASSERT_EQ(b.targets[at], real ? ids[t + 1] : o.pad_id);
        ASSERT_EQ(b.loss_mask[at], real ? m[t + 1] : 0) << "doc " << d << " t " << t;
        supervised += b.loss_mask[at];
        // In chat rows, exactly the assistant bytes and its <|im_end|> are trained on.
        if (d % 4 == 3 && real && b.loss_mask[at]) {
          ASSERT_TRUE(b.targets[at] < 256 || b.targets[at] == ByteEncoder::kImEnd);
        }
      }
    }
  }
  EXPECT_EQ(seen.size(), docs_->size());
  EXPECT_EQ(supervised, expected_supervised);
}

TEST_F(LoaderTest, SameSeedSameBatchesDifferentSeedDifferentBatches) {
  for (auto mode : {PackMode::pack, PackMode::pad}) {
    Loader a(ds(), opts(mode, 11)), b(ds(), opts(mode, 11)), c(ds(), opts(mode, 12));
    int differ = 0;
    for (int i = 0; i < 40; ++i) {  // more than one epoch for pad (300 docs / 4 rows = 75 steps)... and pack
      Batch x = a.next(), y = b.next(), z = c.next();
      ASSERT_TRUE(same_batch(x, y)) << "step " << i;
      differ += x.sample_ids != z.sample_ids;
    }
    EXPECT_GE(differ, 35);
    // A new epoch is a new order.
    Loader e(ds(), opts(mode, 11));
    auto first = e.next().sample_ids;
    for (int64_t i = 1; i < e.steps_per_epoch(); ++i) e.next();
    Batch next_epoch = e.next();
    EXPECT_EQ(next_epoch.epoch, 1);
    EXPECT_NE(next_epoch.sample_ids, first);
  }
}

TEST_F(LoaderTest, ResumeAtStepNGivesTheBatchesOfAFreshRun) {
  for (auto mode : {PackMode::pack, PackMode::pad}) {
    for (int rank = 0; rank < 2; ++rank) {
      auto o = opts(mode, 5, rank, 2);
      Loader fresh(ds(), o);
      const int64_t per_epoch = fresh.steps_per_epoch();
      const int64_t N = per_epoch - 3, M = 10;  // the resumed part crosses into the next epoch
      std::vector<Batch> expected;
      for (int64_t i = 0; i < N + M; ++i) expected.push_back(fresh.next());

      Loader first(ds(), o);
      for (int64_t i = 0; i < N; ++i) first.next();
      const std::string saved = first.state().to_json().dump();  // as a checkpoint would store it
      Loader resumed(ds(), o);
      resumed.restore(LoaderState::from_json(nlohmann::json::parse(saved)));
      for (int64_t i = 0; i < M; ++i) {
        ASSERT_TRUE(same_batch(resumed.next(), expected[N + i]))
            << (mode == PackMode::pack ? "pack" : "pad") << " rank " << rank << " step " << N + i;
      }
      EXPECT_EQ(expected.back().epoch, 1);
    }
  }
}

TEST_F(LoaderTest, RanksAreDisjointAndTogetherCoverTheEpoch) {
  for (auto mode : {PackMode::pack, PackMode::pad}) {
    for (bool drop_last : {false, true}) {
      std::vector<int64_t> all;
      int64_t samples = 0, steps = 0;
      std::vector<int64_t> rows(3, 0);
      for (int rank = 0; rank < 3; ++rank) {
        auto o = opts(mode, 9, rank, 3);
        o.drop_last = drop_last;
        Loader loader(ds(), o);
        samples = loader.samples_per_epoch();
        steps = loader.steps_per_epoch();
        for (int64_t s = 0; s < loader.steps_per_epoch(); ++s) {
          Batch b = loader.next();
          all.insert(all.end(), b.sample_ids.begin(), b.sample_ids.end());
          rows[rank] += b.batch;
        }
      }
      std::sort(all.begin(), all.end());
      EXPECT_TRUE(std::adjacent_find(all.begin(), all.end()) == all.end()) << "a sample went to two ranks";
      const int64_t expect = drop_last ? steps * 4 * 3 : samples;
      EXPECT_EQ(static_cast<int64_t>(all.size()), expect);
      EXPECT_LE(*std::max_element(rows.begin(), rows.end()) - *std::min_element(rows.begin(), rows.end()), 1);
      if (!drop_last) {
        for (int64_t i = 0; i < samples; ++i) ASSERT_EQ(all[i], i);
      }
    }
  }
}

// W ranks of B rows take, at step s, exactly the rows one rank of B rows takes at steps sW .. sW + W - 1 (its
// micro-batches 0 .. W-1 with grad_accum W): what lets data-parallel training reproduce one process
// (docs/dist.md). Pack and pad; `position` is the first row's place in the epoch's order.
TEST_F(LoaderTest, RankBlocksAreTheMicroBatchesOfOneProcess) {
  for (auto mode : {PackMode::pack, PackMode::pad}) {
    const int W = 3;
    auto single = opts(mode, 4);
    single.batch_size = 2;
    Loader one(ds(), single);
    std::vector<std::unique_ptr<Loader>> ranks;
    for (int r = 0; r < W; ++r) {
      auto o = opts(mode, 4, r, W);
      o.batch_size = 2;
      ranks.push_back(std::make_unique<Loader>(ds(), o));
    }
    const int64_t steps = ranks[0]->steps_per_epoch();  // one epoch: one rank's may be longer (drop_last)
    ASSERT_GT(steps, 1);
    for (int64_t s = 0; s < steps; ++s) {
      for (int r = 0; r < W; ++r) {
        const Batch got = ranks[r]->next(), want = one.next();
        ASSERT_EQ(got.sample_ids, want.sample_ids) << "step " << s << " rank " << r;
        ASSERT_EQ(got.input_ids, want.input_ids) << "step " << s << " rank " << r;
        EXPECT_EQ(got.epoch, want.epoch);
        EXPECT_EQ(got.position, want.position);
        EXPECT_EQ(got.position, s * 2 * W + r * 2) << "step " << s << " rank " << r;
      }
    }
  }
}

TEST_F(LoaderTest, ValidationSplitIsDocumentLevelDisjointAndComplete) {
  std::set<int64_t> train, valid;
  for (auto split : {Split::train, Split::valid}) {
    auto o = opts(PackMode::pad, 1);
    o.split = split;
    o.batch_size = 1;
    o.drop_last = false;
    Loader loader(ds(), o);  // valid_fraction 0.2 and split_seed 7 from prepare time
    for (int64_t s = 0; s < loader.steps_per_epoch(); ++s) {
      for (int64_t d : loader.next().sample_ids) (split == Split::train ? train : valid).insert(d);
    }
  }
  EXPECT_EQ(train.size() + valid.size(), docs_->size());
  for (int64_t d : valid) EXPECT_EQ(train.count(d), 0u);
  EXPECT_NEAR(static_cast<double>(valid.size()) / 300, 0.2, 0.07);  // binomial: sd 0.023
  // The split does not depend on the shuffle seed.
  auto o = opts(PackMode::pad, 999);
  o.split = Split::valid;
  o.batch_size = 1;
  o.drop_last = false;
  Loader other(ds(), o);
  std::set<int64_t> valid2;
  for (int64_t s = 0; s < other.steps_per_epoch(); ++s) valid2.insert(other.next().sample_ids[0]);
  EXPECT_EQ(valid, valid2);
}

TEST_F(LoaderTest, RestoreRejectsADifferentConfigurationByName) {
  Loader a(ds(), opts(PackMode::pack, 1));
  a.next();
  auto state = a.state();
  auto o = opts(PackMode::pack, 1);
  o.seq_len = 16;
  Loader b(ds(), o);
  try {
    b.restore(state);
    ADD_FAILURE() << "no error";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("seq_len"), std::string::npos) << e.what();
  }
  Loader c(ds(), opts(PackMode::pack, 2));
  EXPECT_THROW(c.restore(state), qad::Error);
  auto fp = opts(PackMode::pack, 1);
  fp.expected_fingerprint = "another-tokenizer";
  EXPECT_THROW(Loader(ds(), fp), qad::Error);
}

TEST_F(LoaderTest, DamagedShardsAreRejectedWithAMessage) {
  const fs::path copy = *dir_ / "damaged";
  ::qad::remove_tree(copy);
  fs::copy(ds(), copy);
  const fs::path shard = copy / "shard-00000.bin";
  const std::string bytes = qad::read_file(shard);
  // Truncated.
  qad::testing::write_bytes(shard, bytes.substr(0, bytes.size() - 10));
  try {
    TokenDataset d(copy);
    ADD_FAILURE() << "no error";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  // A token id outside the vocabulary.
  std::string bad = bytes;
  ShardHeader h;
  std::memcpy(&h, bad.data(), sizeof h);
  const uint32_t huge = 1000000;
  std::memcpy(bad.data() + h.tokens_at, &huge, 4);
  qad::testing::write_bytes(shard, bad);
  EXPECT_THROW(TokenDataset{copy}, qad::Error);
  // Offsets pointing past the tokens.
  bad = bytes;
  const uint64_t past = h.num_tokens + 5;
  std::memcpy(bad.data() + h.offsets_at + 8, &past, 8);
  qad::testing::write_bytes(shard, bad);
  EXPECT_THROW(TokenDataset{copy}, qad::Error);
  qad::testing::write_bytes(shard, bytes);
  EXPECT_NO_THROW(TokenDataset{copy});
}

// A state taken on 2 ranks x 2 rows continues exactly on 1 rank x 4 rows: the same global rows, in blocks
// (rank r holds rows 2r, 2r + 1 of each global step). Another global batch is refused by name.
TEST_F(LoaderTest, RestoreAcrossWorldSizesKeepsTheGlobalBatch) {
  auto two = opts(PackMode::pack, 1, 0, 2);
  two.batch_size = 2;
  auto two1 = two;
  two1.rank = 1;
  Loader r0(ds(), two), r1(ds(), two1);
  r0.next();
  r1.next();
  auto one = opts(PackMode::pack, 1);
  one.batch_size = 4;
  Loader a(ds(), one);
  a.restore(r1.state());
  const auto x = r0.next(), y = r1.next(), b = a.next();
  EXPECT_EQ(b.sample_ids, std::vector<int64_t>({x.sample_ids[0], x.sample_ids[1], y.sample_ids[0], y.sample_ids[1]}));
  one.batch_size = 3;
  Loader c(ds(), one);
  try {
    c.restore(r0.state());
    ADD_FAILURE() << "no error";
  } catch (const qad::Error& e) {
    // Row 8 (two steps of 4) does not begin a step of 3 rows.
    EXPECT_NE(std::string(e.what()).find("stopped after row 8 of epoch 0 (step 2 of 4 rows"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("global batch of 3 rows"), std::string::npos) << e.what();
  }
}

// The position is a row of the epoch's order: a state of 4-row steps continues on 2-row steps (gradient
// accumulation over two micro-batches) and on 6-row steps where its row begins one; a finished epoch stays finished.
TEST_F(LoaderTest, RestoreWithAnotherGlobalBatchContinuesAtTheSameRow) {
  auto four = opts(PackMode::pack, 5);
  Loader a(ds(), four);
  for (int i = 0; i < 3; ++i) a.next();
  const auto at_row_12 = a.state();
  auto rows = [](std::initializer_list<Batch> bs) {
    std::vector<int64_t> out;
    for (const auto& b : bs) out.insert(out.end(), b.sample_ids.begin(), b.sample_ids.end());
    return out;
  };
  const auto b3 = a.next(), b4 = a.next();
  auto two = four;
  two.batch_size = 2;
  Loader t(ds(), two);
  t.restore(at_row_12);
  const auto t1 = t.next(), t2 = t.next(), t3 = t.next();
  EXPECT_EQ(rows({t1, t2}), b3.sample_ids);
  EXPECT_EQ(t1.epoch, 0);
  EXPECT_EQ(t1.step, 6);  // row 12 / 2
  EXPECT_EQ(t1.position, 12);
  EXPECT_EQ(t3.sample_ids, std::vector<int64_t>(b4.sample_ids.begin(), b4.sample_ids.begin() + 2));
  auto six = four;
  six.batch_size = 6;
  Loader x(ds(), six);
  x.restore(at_row_12);
  std::vector<int64_t> want = b3.sample_ids;
  want.insert(want.end(), b4.sample_ids.begin(), b4.sample_ids.begin() + 2);
  EXPECT_EQ(x.next().sample_ids, want);
  // After the epoch's last step: the next batch is the next epoch's first, in any global batch.
  Loader end(ds(), four);
  for (int64_t s = 0; s < end.steps_per_epoch(); ++s) end.next();
  const auto finished = end.state();
  const auto e1 = end.next();
  Loader t_end(ds(), two);
  t_end.restore(finished);
  const auto f = t_end.next();
  EXPECT_EQ(f.epoch, 1);
  EXPECT_EQ(f.step, 0);
  EXPECT_EQ(f.sample_ids, std::vector<int64_t>(e1.sample_ids.begin(), e1.sample_ids.begin() + 2));
  // Row 12 is inside a step of 8 rows: refused, naming the row and both batches.
  auto eight = four;
  eight.batch_size = 8;
  Loader y(ds(), eight);
  try {
    y.restore(at_row_12);
    ADD_FAILURE() << "no error";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("stopped after row 12 of epoch 0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("global batch of 8 rows (batch_size 8 x world_size 1)"), std::string::npos)
        << e.what();
  }
}


}  // namespace
}  // namespace qad::data
