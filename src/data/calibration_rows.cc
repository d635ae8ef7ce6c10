// PTQ calibration rows (see calibration_rows.h).
#include "data/calibration_rows.h"

#include <algorithm>

#include "util/error.h"

namespace qad::data {

LoaderOptions calibration_loader_options(LoaderOptions training) {
  training.seed += kCalibrationSeedOffset;
  training.shuffle = true;
  training.rank = 0;  // every rank reads all the rows, in forwards of one rank's micro-batch (see the header)
  training.world_size = 1;
  return training;
}

int64_t for_each_calibration_batch(Loader& loader, int64_t samples, const torch::Device& device,
                                   const std::function<void(const BatchTensors&)>& sink) {
  QAD_CHECK(samples > 0, "calibration needs at least one row, got {}", samples);
  const int64_t rows = std::min(samples, loader.samples_per_epoch());
  QAD_CHECK(rows > 0, "the calibration data holds not even one row of {} tokens; give more data or a smaller "
            "sequence length", loader.options().seq_len);
  int64_t given = 0;
  while (given < rows) {
    auto b = to_tensors(loader.next(), device);
    const int64_t take = std::min<int64_t>(b.input_ids.size(0), rows - given);
    if (take < b.input_ids.size(0)) {
      b.input_ids = b.input_ids.narrow(0, 0, take);
      b.targets = b.targets.narrow(0, 0, take);
      b.loss_mask = b.loss_mask.narrow(0, 0, take);
      b.attention_mask = b.attention_mask.narrow(0, 0, take);
    }
    sink(b);
    given += take;
  }
  return given;
}

}  // namespace qad::data
