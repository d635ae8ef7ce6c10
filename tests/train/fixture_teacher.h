// A teacher fixture for the CPU training tests (tests/fixtures/models/...): the frozen FP32 teacher, random token
// batches, its PTQ student and the held-out KL that the QAD tests compare against PTQ's.
#pragma once

#include <torch/torch.h>

#include <filesystem>

#include "common/test_util.h"
#include "data/batch_tensors.h"
#include "random_batch.h"
#include "loss/logit_losses.h"
#include "train/student.h"

namespace qad::train {

struct FixtureTeacher {
  std::filesystem::path dir;  // under tests/fixtures/models
  int64_t vocab = 0;          // token ids are drawn in [0, vocab)
  int64_t seq_len = 0;        // of the calibration and held-out batches

  bool exists() const { return std::filesystem::exists(dir / "model.safetensors"); }

  model::CausalLM load() const {
    auto t = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
    t->eval();
    for (auto& p : t->parameters()) p.set_requires_grad(false);
    return t;
  }

  data::BatchTensors batch(int64_t rows, int64_t t, uint64_t salt) const { return random_batch(rows, t, vocab, salt); }

  // NVFP4 with cfg's quant settings, calibrated on 4 random batches of 4 rows.
  Student ptq_student(const TrainConfig& cfg) const {
    return quantize_student(load(), cfg, [this](const CalibSink& sink) {
      for (uint64_t i = 0; i < 4; ++i) sink(batch(4, seq_len, 100 + i).input_ids, {});
    });
  }

  // Mean KL(teacher || student) over 4 held-out batches (salts no training batch uses).
  double heldout_kl(model::CausalLM& student, model::CausalLM& teacher) const {
    torch::NoGradGuard ng;
    double sum = 0;
    for (uint64_t i = 0; i < 4; ++i) {
      auto b = batch(4, seq_len, 900 + i);
      sum += loss::kl_divergence(student->forward(b.input_ids).logits, teacher->forward(b.input_ids).logits,
                                 b.loss_mask).item<double>();
    }
    return sum / 4;
  }
};

}  // namespace qad::train
