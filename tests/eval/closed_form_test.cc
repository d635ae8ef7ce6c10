// Closed-form checks on a hand-built FP32 decoder that is exactly a bigram model: attention and MLP outputs are
// zero (o_proj = down_proj = 0), so the final hidden state is RMSNorm(embedding(x)) and the logits are
// W[:, x] * factor. Perplexity, KL(teacher||model), top-1 agreement and multiple-choice log-likelihoods then
// have exact values computed here in FP64 from the weights alone.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "util/remove_tree.h"
#include "common/test_util.h"
#include "eval/lm_metrics.h"
#include "checkpoint/load.h"
#include "eval/model_spec.h"
#include "eval/task_eval.h"
#include "eval/token_stream.h"
#include "model/config.h"
#include "util/error.h"

namespace fs = std::filesystem;
using qad::model::CausalLM;

namespace {

constexpr int64_t kVocab = 8;
constexpr double kTol = 1e-5;  // the model computes in FP32; the references in FP64

// A bigram decoder: embedding = identity (hidden = vocab = 8), all norms 1, attention/MLP zeroed, lm_head
// random. Saved as an HF checkpoint and loaded back through checkpoint::load_model in FP64.
struct Bigram {
  CausalLM lm{nullptr};
  torch::Tensor logp;  // FP64 [V, V]: logp[a][b] = log p(next = b | current = a)
};

Bigram make_bigram(uint64_t salt, const fs::path& dir) {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}}, {"vocab_size", kVocab}, {"hidden_size", kVocab},
                      {"intermediate_size", 4}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
                      {"num_key_value_heads", 1}, {"rms_norm_eps", 1e-6}, {"max_position_embeddings", 64},
                      {"tie_word_embeddings", false}, {"dtype", "float32"}};
  CausalLM lm(qad::model::parse_config(j, "bigram"));
  auto gen = qad::testing::seeded_generator(salt);
  {
    torch::NoGradGuard g;
    for (auto& [name, p] : lm->hf_tensors()) {
      if (name.ends_with("norm.weight")) {
        p.fill_(1.0);
      } else if (name == "model.embed_tokens.weight") {
        p.copy_(torch::eye(kVocab));
      } else if (name == "lm_head.weight") {
        p.copy_(2.0 * torch::randn(p.sizes(), gen));
      } else {
        // q/k/v/gate/up random (their outputs are multiplied away); o_proj and down_proj zero.
        bool zero = name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos;
        p.copy_(zero ? torch::zeros(p.sizes()) : torch::randn(p.sizes(), gen));
      }
    }
  }
  lm->save(dir);
  Bigram b;
  b.lm = qad::checkpoint::load_model(dir, torch::kCPU, torch::kFloat32);
  // RMSNorm of a one-hot row e_x: e_x / sqrt(1/H + eps); logits[b] = W[b, x] * that, here in FP64.
  const double factor = 1.0 / std::sqrt(1.0 / kVocab + 1e-6);
  auto logits = b.lm->lm_head->weight.detach().to(torch::kFloat64).t() * factor;  // [x, b]
  b.logp = torch::log_softmax(logits, 1);
  return b;
}

fs::path temp_dir(const std::string& name) {
  return fs::temp_directory_path() / ("qad_eval_cf_" + std::to_string(::getpid()) + "_" + name);
}

qad::eval::TokenStream stream_of(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask) {
  qad::eval::TokenStream s;
  s.ids = ids;
  s.mask = mask;
  s.documents = 1;
  return s;
}

class ClosedForm : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    student_ = new Bigram(make_bigram(1, temp_dir("student")));
    teacher_ = new Bigram(make_bigram(2, temp_dir("teacher")));
  }
  static void TearDownTestSuite() {
    delete student_;
    delete teacher_;
    ::qad::remove_tree(temp_dir("student"));
    ::qad::remove_tree(temp_dir("teacher"));
  }
  static Bigram* student_;
  static Bigram* teacher_;
};
Bigram* ClosedForm::student_ = nullptr;
Bigram* ClosedForm::teacher_ = nullptr;

// 23 tokens, some targets unscored (mask 0), windows of 5 targets: 5 windows, the last one shorter.
const std::vector<int32_t> kIds = {3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 0, 7, 7, 2, 1, 0, 4, 6, 2, 6, 4, 3, 3};
const std::vector<uint8_t> kMask = {1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1};

}  // namespace

TEST_F(ClosedForm, PerplexityEqualsTheBigramClosedForm) {
  double nll = 0;
  int64_t n = 0;
  for (size_t t = 1; t < kIds.size(); ++t) {
    if (!kMask[t]) continue;
    nll -= student_->logp[kIds[t - 1]][kIds[t]].item<double>();
    ++n;
  }
  for (int64_t seq_len : {5, 22, 64}) {  // several windows / exactly one / one short window
    qad::eval::LmEvalOptions o;
    o.seq_len = seq_len;
    o.batch_size = 2;
    o.progress = false;
    auto m = qad::eval::evaluate_lm(student_->lm, nullptr, stream_of(kIds, kMask), o);
    EXPECT_EQ(m.scored_tokens, n) << "seq_len " << seq_len;
    EXPECT_EQ(m.stream_tokens, 23);
    EXPECT_EQ(m.windows, (22 + seq_len - 1) / seq_len);
    EXPECT_NEAR(m.nll, nll / static_cast<double>(n), kTol) << "seq_len " << seq_len;
    EXPECT_NEAR(m.perplexity, std::exp(nll / static_cast<double>(n)), kTol * m.perplexity);
    EXPECT_FALSE(m.kl.has_value());
  }
}

TEST_F(ClosedForm, KlAndAgreementAgainstAnotherBigram) {
  double kl = 0, t_nll = 0;
  int64_t n = 0, agree = 0;
  for (size_t t = 1; t < kIds.size(); ++t) {
    if (!kMask[t]) continue;
    auto lt = teacher_->logp[kIds[t - 1]], ls = student_->logp[kIds[t - 1]];
    kl += (lt.exp() * (lt - ls)).sum().item<double>();
    t_nll -= lt[kIds[t]].item<double>();
    agree += lt.argmax().item<int64_t>() == ls.argmax().item<int64_t>() ? 1 : 0;
    ++n;
  }
  qad::eval::LmEvalOptions o;
  o.seq_len = 4;
  o.batch_size = 3;
  o.progress = false;
  auto m = qad::eval::evaluate_lm(student_->lm, &teacher_->lm, stream_of(kIds, kMask), o);
  ASSERT_TRUE(m.kl && m.top1_agreement && m.teacher_perplexity);
  EXPECT_GT(kl, 0.1);  // the two models really differ
  EXPECT_NEAR(*m.kl, kl / static_cast<double>(n), kTol);
  EXPECT_DOUBLE_EQ(*m.top1_agreement, static_cast<double>(agree) / static_cast<double>(n));
  EXPECT_LT(*m.top1_agreement, 1.0);
  EXPECT_NEAR(*m.teacher_nll, t_nll / static_cast<double>(n), kTol);

  auto self = qad::eval::evaluate_lm(student_->lm, &student_->lm, stream_of(kIds, kMask), o);
  EXPECT_EQ(*self.kl, 0.0);
  EXPECT_EQ(*self.top1_agreement, 1.0);
  EXPECT_EQ(*self.teacher_nll, self.nll);
}

TEST_F(ClosedForm, ContinuationScoresAreSumsOfBigramLogProbs) {
  std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> pairs = {
      {{3, 1}, {4}}, {{3, 1}, {5, 2, 6}}, {{0}, {7, 7, 7, 7}}, {{2, 2, 2, 2, 2, 2}, {1, 0}}};
  auto scores = qad::eval::score_continuations(student_->lm, pairs, 3);  // 3 + 1: two batches
  ASSERT_EQ(scores.size(), pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    double expect = 0;
    int64_t prev = pairs[i].first.back();
    for (int64_t t : pairs[i].second) {
      expect += student_->logp[prev][t].item<double>();
      prev = t;
    }
    EXPECT_NEAR(scores[i], expect, 4 * kTol) << "pair " << i;
  }
}

TEST_F(ClosedForm, MultipleChoicePicksTheMostLikelyChoice) {
  // Choices after context token 3: each single next token b scores logp[3][b]; the right one is the argmax.
  std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> pairs;
  for (int64_t b = 0; b < kVocab; ++b) pairs.push_back({{5, 3}, {b}});
  auto scores = qad::eval::score_continuations(student_->lm, pairs, 8);
  EXPECT_EQ(qad::eval::argmax_first(scores), student_->logp[3].argmax().item<int64_t>());
  EXPECT_EQ(qad::eval::argmax_first({1.0, 3.0, 3.0, -2.0}), 1);  // ties: the first
}

TEST(ModelLoading, UnreadableFormatsSayWhatTheyAre) {
  auto dir = temp_dir("formats");
  fs::create_directories(dir);
  auto expect_error = [&](const std::string& needle) {
    try {
      qad::checkpoint::load_model(dir, torch::kCPU, torch::kFloat32);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const qad::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("no config.json");
  std::ofstream(dir / "trainer_state.json") << "{}";
  EXPECT_EQ(qad::checkpoint::detect(dir), qad::checkpoint::Kind::kTrainingCheckpoint);
  expect_error("no model/config.json");  // a training checkpoint without its student
  std::ofstream(dir / "hf_quant_config.json") << R"({"quantization": {"quant_algo": "NVFP4", "group_size": 16}})";
  EXPECT_EQ(qad::checkpoint::detect(dir), qad::checkpoint::Kind::kNvfp4Export);
  EXPECT_THROW(qad::checkpoint::load_model(dir, torch::kCPU, torch::kFloat32), qad::Error);  // no config, no weights
  ::qad::remove_tree(dir);
  EXPECT_THROW(qad::checkpoint::load_model(dir, torch::kCPU, torch::kFloat32), qad::Error);
}

TEST(ModelSpec, LabelsAndFakeQuantPrefix) {
  auto a = qad::eval::parse_model_spec("../m");
  EXPECT_EQ(a.dir, "../m");
  EXPECT_EQ(a.label, "../m");
  EXPECT_FALSE(a.fake_quant);
  auto b = qad::eval::parse_model_spec("PTQ=fq:../m");
  EXPECT_EQ(b.label, "PTQ");
  EXPECT_EQ(b.dir, "../m");
  EXPECT_TRUE(b.fake_quant);
  EXPECT_EQ(qad::eval::parse_model_spec("fq:d").label, "d (fq)");
  EXPECT_EQ(qad::eval::parse_model_spec("dir/a=b").dir, "dir/a=b");  // '=' after a '/' is part of the path
  EXPECT_THROW(qad::eval::parse_model_spec("X=fq:"), qad::Error);
}

TEST(TokenWindows, EveryTargetExactlyOnce) {
  for (int64_t n : {2, 3, 10, 11, 12}) {
    for (int64_t t : {1, 3, 10}) {
      auto w = qad::eval::make_windows(n, t);
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (const auto& x : w) {
        EXPECT_GE(x.length, 2);
        EXPECT_LE(x.length, t + 1);
        for (int64_t i = x.begin + 1; i < x.begin + x.length; ++i) ++seen[static_cast<size_t>(i)];
      }
      EXPECT_EQ(seen[0], 0);
      for (int64_t i = 1; i < n; ++i) EXPECT_EQ(seen[static_cast<size_t>(i)], 1) << "n " << n << " T " << t << " i " << i;
    }
  }
}
