// Rolling per-document perplexity: the windows of lm-eval's get_rolling_token_windows (context_len 1) by
// hand, and stories260K's rolling figures against a direct per-document forward.
#include <gtest/gtest.h>

#include <cmath>

#include "common/test_util.h"
#include "eval/lm_metrics.h"
#include "checkpoint/load.h"
#include "loss/token_metrics.h"
#include "eval/rolling_perplexity.h"
#include "tokenizer/tokenizer.h"

namespace qad::eval {
namespace {

TEST(RollingWindows, MatchLmEvalsWindowsByHand) {
  // doc x0..x4 = 10..14, prefix 1, max_length 2. lm-eval: ([1, 10], [10, 11]), ([11, 12], [12, 13]),
  // ([12, 13], [14]): inputs, then predictions; as token runs with the targets at the end:
  auto w = rolling_windows({10, 11, 12, 13, 14}, 1, 2);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].tokens, (std::vector<int32_t>{1, 10, 11}));
  EXPECT_EQ(w[0].targets, 2);
  EXPECT_EQ(w[1].tokens, (std::vector<int32_t>{11, 12, 13}));
  EXPECT_EQ(w[1].targets, 2);
  EXPECT_EQ(w[2].tokens, (std::vector<int32_t>{12, 13, 14}));
  EXPECT_EQ(w[2].targets, 1);
  // One window when the document fits; every document token is a target exactly once.
  auto one = rolling_windows({5, 6, 7}, 1, 8);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].tokens, (std::vector<int32_t>{1, 5, 6, 7}));
  EXPECT_EQ(one[0].targets, 3);
  int64_t total = 0;
  for (const auto& x : rolling_windows(std::vector<int32_t>(100, 3), 0, 7)) {
    total += x.targets;
    EXPECT_LE(static_cast<int64_t>(x.tokens.size()) - 1, 7);
  }
  EXPECT_EQ(total, 100);
}

TEST(RollingPerplexity, Stories260KEqualsPerDocumentForwards) {
  const auto dir = qad::testing::shared_dir() / "models/stories260K";
  if (!std::filesystem::exists(dir / "model.safetensors")) GTEST_SKIP() << dir << " not present";
  auto tok = tokenizer::Tokenizer::load(dir);
  auto lm = checkpoint::load_model(dir, torch::kCPU, torch::kFloat32);
  StreamOptions so;  // BOS auto (llama2 puts BOS first), EOS after each document
  so.doc_end = tok.eos_id();
  auto stream = read_token_stream({qad::testing::source_dir() / "tests/fixtures/eval/heldout_stories.jsonl"}, &tok, so);
  ASSERT_EQ(stream.spans.size(), 5u);
  RollingOptions ro;
  ro.seq_len = 512;  // every story fits one window
  ro.bos_id = tok.bos_id();
  ro.prefix_id = *tok.bos_id();
  ro.progress = false;
  auto m = evaluate_rolling(lm, stream, ro);
  // Reference: each story alone, [BOS] + text tokens, all text tokens scored, the EOS after it not.
  double nll = 0;
  int64_t tokens = 0, bytes = 0;
  torch::NoGradGuard g;
  for (const auto& s : stream.spans) {
    std::vector<int64_t> ids(stream.ids.begin() + s.begin, stream.ids.begin() + s.begin + s.tokens);
    ASSERT_EQ(ids.front(), *tok.bos_id());
    auto logits = lm->forward(torch::tensor(ids).unsqueeze(0)).logits[0];
    const auto n = static_cast<int64_t>(ids.size());
    nll += loss::nll_sum(logits.narrow(0, 0, n - 1), torch::tensor(ids).narrow(0, 1, n - 1));
    tokens += n - 1;
    bytes += s.bytes;
  }
  EXPECT_EQ(m.documents, 5);
  EXPECT_EQ(m.tokens, tokens);
  EXPECT_EQ(m.bytes, bytes);
  EXPECT_NEAR(m.nll_sum, nll, 1e-6 * nll);
  EXPECT_NEAR(m.byte_perplexity, std::exp(nll / static_cast<double>(bytes)), 1e-6 * m.byte_perplexity);  // as nll
  EXPECT_NEAR(m.bits_per_byte, nll / static_cast<double>(bytes) / std::log(2.0), 1e-6 * m.bits_per_byte);
  EXPECT_GT(m.words, 5);
  // Shorter windows see less context: never a lower loss on these stories, and the same targets.
  ro.seq_len = 16;
  auto short_windows = evaluate_rolling(lm, stream, ro);
  EXPECT_EQ(short_windows.tokens, tokens);
  EXPECT_GT(short_windows.windows, m.windows);
  EXPECT_GT(short_windows.nll_sum, m.nll_sum);
}

}  // namespace
}  // namespace qad::eval
