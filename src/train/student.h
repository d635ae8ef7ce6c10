// The student: the one file that talks to the quantization library. PTQ = the teacher's weights with NVFP4
// fake quantization on every eligible Linear, calibrated on training batches; or a given checkpoint
// (quant.student: an NVFP4 export or a quantized training checkpoint keeps its quantization; any other kind is
// quantized and calibrated like the teacher); or (method pretrain) the plain unquantized model. Also the student's quantizer state for checkpoints and
// the final exports (NVFP4, optional BF16).
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "checkpoint/training_checkpoint.h"
#include "train/config.h"

namespace qad::train {

// Calls sink(input_ids [B, T] int64, mask [B, T] or undefined) for each calibration batch.
// PTQ calibration rows: quant.options.calib_samples (--calib-samples), or calib_batches global batches when it is 0.
int64_t calibration_samples(const TrainConfig& cfg);

using CalibSink = std::function<void(const torch::Tensor& input_ids, const torch::Tensor& mask)>;
using CalibSource = std::function<void(const CalibSink&)>;

struct Student {
  model::CausalLM lm{nullptr};
  bool quantized = false;
  std::vector<std::string> quantized_modules;
};

// True for the methods whose student is NVFP4 (everything but pretrain).
bool method_quantizes(Method m);

// Builds the student for cfg.method on `device` in `dtype`: loads weights (teacher or quant.student), installs
// the NVFP4 hooks and, unless `calibrate` is false (a resumed run restores the quantizer state instead),
// calibrates them on `calib`.
Student build_student(const TrainConfig& cfg, torch::Device device, torch::ScalarType dtype, const CalibSource& calib,
                      bool calibrate = true);

// Installs NVFP4 on an in-memory model (e.g. a random one in the benchmarks) and calibrates it on `calib`.
Student quantize_student(model::CausalLM lm, const TrainConfig& cfg, const CalibSource& calib);

// Elements of the weights whose fake-quantized copies the student's hooks keep (the NVFP4 and FP8 Linears that
// apply_nvfp4 selects under cfg.quant.options), from the config alone: for `qad distill --plan`. The rules are
// apply_nvfp4's (include / exclude / overrides / fp8_layers / keep_blocks, input size a multiple of 16, never a tied
// lm_head) except its fused-group fallback, which only changes anything for configurations it warns about.
int64_t fake_quantized_weight_elements(const model::ModelConfig& config, const TrainConfig& cfg);

checkpoint::QuantizerSnapshot quantizer_state(const Student& s);
void load_quantizer_state(Student& s, const TrainConfig& cfg, const checkpoint::QuantizerSnapshot& snap);

// RUN_DIR/export/nvfp4 (the ModelOpt layout, when quantized), RUN_DIR/export/hf (an unquantized student:
// the model as trained, in its compute dtype) and, with bf16, RUN_DIR/export/bf16: an HF checkpoint of the
// weights the student computes with (NVFP4-rounded where quantized) in BF16. Tokenizer files are copied.
// Returns the directories written.
std::vector<std::filesystem::path> export_student(const Student& s, const TrainConfig& cfg, bool nvfp4, bool bf16);
// The format RUN_DIR/export/nvfp4 is written in: "NVFP4", "W4A16_NVFP4", with " + FP8 KV" when the KV cache is.
std::string export_format_label(const Student& s);

}  // namespace qad::train
