// Helpers for the quant tests: the models they run on, seeded calibration batches, and token documents from
// stories260K's golden files.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "model/causal_lm.h"
#include "quant/quantize_model.h"
#include "util/error.h"
#include "util/remove_tree.h"

namespace qad::testing {

// A fresh scratch directory path under the temp dir, unique to this process (removed first if it exists).
inline std::filesystem::path scratch_dir(const std::string& prefix, const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / fmt::format("{}_{}_{}", prefix, ::getpid(), name);
  ::qad::remove_tree(p);
  return p;
}

// f must throw qad::Error whose message contains every one of `parts`.
inline void expect_error_containing(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected qad::Error";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " / " << p;
  }
}

inline std::vector<std::filesystem::path> quant_model_dirs() {
  std::vector<std::filesystem::path> dirs;
  for (const char* n : {"llama3_rope_gqa_untied", "llama_tied_mha_sharded", "qwen2_bias_gqa_untied",
                        "qwen3_qknorm_headdim_tied"}) {
    dirs.push_back(source_dir() / "tests/fixtures/models" / n);
  }
  dirs.push_back(shared_dir() / "models/stories260K");
  // Qwen3-MoE (indices 5, 6): experts quantized per expert, routers excluded.
  for (const char* n : {"qwen3_moe_sparse_step", "qwen3_moe_mlp_only_per_expert"}) {
    dirs.push_back(source_dir() / "tests/fixtures/models" / n);
  }
  // NemotronH (indices 7, 8): Mamba in_proj/out_proj, attention, relu2 MLP, experts and shared experts quantized.
  for (const char* n : {"nemotronh_hybrid", "nemotronh_moe"}) dirs.push_back(source_dir() / "tests/fixtures/models" / n);
  return dirs;
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream f(p);
  EXPECT_TRUE(f.good()) << "cannot read " << p;
  return nlohmann::json::parse(f);
}

// `batches` batches of random token ids [batch, seq] (seeded), the last row of each half padded.
inline quant::BatchSource random_batches(int64_t vocab, int64_t batches, int64_t batch, int64_t seq, uint64_t salt,
                                         bool with_padding = false) {
  return [=](const quant::BatchSink& sink) {
    auto gen = seeded_generator(salt);
    for (int64_t i = 0; i < batches; ++i) {
      auto ids = torch::randint(vocab, {batch, seq}, gen, torch::kLong);
      torch::Tensor mask;
      if (with_padding) {
        mask = torch::ones({batch, seq}, torch::kLong);
        mask[batch - 1].narrow(0, 0, seq / 2).fill_(0);  // left padding, as generate() pads
      }
      sink(ids, mask);
    }
  };
}

// Calibration batches from id lists: one document per row (no padding needed when they are cut to one length).
inline quant::BatchSource document_batches(const std::vector<std::vector<int64_t>>& docs, int64_t len) {
  return [=](const quant::BatchSink& sink) {
    for (const auto& d : docs) {
      if (static_cast<int64_t>(d.size()) < len) continue;
      sink(torch::tensor(std::vector<int64_t>(d.begin(), d.begin() + len), torch::kLong).unsqueeze(0), {});
    }
  };
}

// stories260K's greedy generations (BOS + prompt + continuation): calibration text.
inline std::vector<std::vector<int64_t>> stories_generations() {
  auto j = read_json(shared_dir() / "models/stories260K/golden_generate.json");
  std::vector<std::vector<int64_t>> out;
  for (const auto& g : j["generations"]) out.push_back(g["ids"].get<std::vector<int64_t>>());
  return out;
}

// The 120 TinyStories-like sentences of golden_tokenizer.json (group "story"), HF ids with BOS: held-out text.
inline std::vector<std::vector<int64_t>> stories_heldout() {
  auto j = read_json(shared_dir() / "models/stories260K/golden_tokenizer.json");
  std::vector<std::vector<int64_t>> out;
  for (const auto& e : j["entries"]) {
    if (e["group"] != "story") continue;
    out.push_back((e.contains("hf_ids") ? e["hf_ids"] : e["ids"]).get<std::vector<int64_t>>());
  }
  return out;
}

// A fixture model, NVFP4-quantized and max-calibrated on seeded random ids.
inline model::CausalLM quantized_fixture(const std::filesystem::path& dir, torch::ScalarType dtype = torch::kFloat32,
                                         const quant::QuantConfig& cfg = {}) {
  auto lm = model::CausalLM::load(dir, torch::kCPU, dtype);
  quant::apply_nvfp4(lm, cfg);
  if (dir.filename() == "stories260K") {
    quant::calibrate(lm, document_batches(stories_generations(), 64), cfg);
  } else {
    quant::calibrate(lm, random_batches(lm->config().vocab_size, 4, 2, 24, 7), cfg);
  }
  return lm;
}

}  // namespace qad::testing
