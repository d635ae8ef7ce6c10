// `qad cka`'s computation: per-layer linear CKA of each model's decoder-layer hidden states against the
// teacher's on the same windows, with loss::CkaAccumulator (full / minibatch x biased / debiased).
#pragma once
#include <cstdint>
#include <vector>

#include "eval/token_stream.h"
#include "loss/cka_accumulator.h"
#include "model/causal_lm.h"
#include "report/cka_output.h"

namespace qad::eval {

struct CkaEvalOptions {
  int64_t seq_len = 256;    // tokens per window
  int64_t batch_size = 8;   // windows per batch = one minibatch of the minibatch estimators
  bool include_norm = false;  // also the final norm's output ("norm")
  bool full = true;         // full-dataset estimators (p x p FP64 statistics per layer and model)
  bool progress = true;
};

struct NamedModel {
  std::string label;
  model::CausalLM* lm = nullptr;
};

struct CkaEvalResult {
  std::vector<report::ModelCkaResult> models;  // one per model, layers in depth order
  int64_t tokens = 0;                          // tokens per layer (real, non-padding positions)
  int64_t batches = 0;
  double seconds = 0;
};

// Every window position of the stream counts (CKA compares representations, not predictions: the scored
// mask does not apply); padding of the last, shorter window is masked out. Layers are matched by name
// ("layers.N"), so the models must have the teacher's depth.
CkaEvalResult layer_cka(model::CausalLM& teacher, const std::vector<NamedModel>& models, const TokenStream& stream,
                        const CkaEvalOptions& options);

// LayerCka (loss) -> LayerCka (report).
report::LayerCka to_report(const loss::LayerCka& l);

}  // namespace qad::eval
