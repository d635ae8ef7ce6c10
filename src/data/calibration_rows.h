// The rows PTQ calibrates on: one definition for `qad quantize` and for the PTQ start of `qad distill`, so that
// "the PTQ baseline" means one thing (docs/quant.md, "The PTQ baseline"). They are the rows of the training
// loader (split, packing or padding, sequence length, batch size) visited in the shuffled order of the seed
// `seed + kCalibrationSeedOffset` (another order than training's), the first `samples` of one pass.
#pragma once
#include <cstdint>
#include <functional>

#include "data/batch_tensors.h"
#include "data/loader.h"

namespace qad::data {

inline constexpr uint64_t kCalibrationSeedOffset = 0x9e3779b97f4a7c15ull;

// The calibration loader's options from the training loader's: its own shuffle order; every rank reads the
// same rows (rank 0 of 1), so that the quantizer's scales agree across ranks, in forwards of batch_size rows (one
// rank's micro-batch, whatever the number of ranks): another forward batch size moves activations by an ulp (GEMM
// blocking) and with them amaxes, so W ranks calibrate exactly as one process of the same micro-batch does.
LoaderOptions calibration_loader_options(LoaderOptions training);

// Calls sink with the first min(samples, rows of one pass) rows, batch by batch (the last batch cut to size);
// returns the number of rows given. samples <= 0 is an error.
int64_t for_each_calibration_batch(Loader& loader, int64_t samples, const torch::Device& device,
                                   const std::function<void(const BatchTensors&)>& sink);

}  // namespace qad::data
