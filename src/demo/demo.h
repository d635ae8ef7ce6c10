// `qad demo`: the whole story on a fresh machine with no downloads. Generates the arithmetic task, trains a
// tiny Qwen3 teacher on it with qad's own trainer (plain cross-entropy, no quantization), saves it as an HF
// checkpoint, then runs PTQ, QAT, QAD and CKA-QAD with the same budget and prints a comparison: task accuracy,
// KL to the teacher, perplexity, top-1 agreement, mean and per-layer CKA.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

namespace qad::demo {

struct DemoOptions {
  std::filesystem::path out = "qad-demo";
  std::string device = "auto";
  std::string size = "tiny";      // tiny: ~5 min on 2 CPU cores; small: a bigger model and budget for a GPU; smoke: tests
  int64_t teacher_steps = -1;     // -1 = the size's default
  int64_t student_steps = -1;
  int64_t test_examples = -1;
  uint64_t seed = 0;
};

// Returns 0; throws qad::Error on failure. Prints progress and the final table; writes OUT/comparison.md.
int run_demo(const DemoOptions& options);

}  // namespace qad::demo
