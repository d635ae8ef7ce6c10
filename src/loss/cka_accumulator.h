// Dataset-level CKA per layer for `qad cka` and validation: feed batches of (teacher, model) hidden states,
// get four values per layer: {biased, debiased} x {full dataset, minibatch-averaged}.
#pragma once
#include <torch/torch.h>

#include <limits>
#include <map>
#include <string>
#include <vector>

#include "loss/cka.h"

namespace qad::loss {

struct LayerCka {
  std::string layer;
  int64_t tokens = 0;   // valid tokens seen
  int64_t batches = 0;  // batches seen (those with fewer than 4 valid tokens are left out of minibatch_debiased)
  // CKA of all tokens of the dataset as one matrix (exact: accumulated sufficient statistics, no n x n).
  double full_biased = std::numeric_limits<double>::quiet_NaN();
  double full_debiased = std::numeric_limits<double>::quiet_NaN();
  // Nguyen et al.'s minibatch CKA: HSIC terms averaged over batches (each batch weighs the same), then normalised.
  double minibatch_biased = std::numeric_limits<double>::quiet_NaN();
  double minibatch_debiased = std::numeric_limits<double>::quiet_NaN();
};

class CkaAccumulator {
 public:
  // full = false skips the full-dataset statistics (FP64 p x p matrices: 8 * (p1^2 + p2^2 + p1 p2) bytes per
  // layer on the data's device) and keeps only the minibatch averages.
  explicit CkaAccumulator(bool full = true) : full_(full) {}

  // x (reference / teacher) and y (model) hidden states of one batch: [B, T, H] or [n, H]; mask of the token
  // dimensions ([B, T] or [n], nonzero = counts) or undefined. No gradient is recorded.
  void add(const std::string& layer, const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& mask);

  // Per layer, in the order layers were first added. One host synchronisation per layer.
  std::vector<LayerCka> result() const;

 private:
  struct Minibatch {
    torch::Tensor biased, debiased;  // FP64 [3]: sums over batches of (xy, xx, yy) HSIC estimates
    int64_t n_biased = 0, n_debiased = 0;
  };
  // Sufficient statistics of the rows shifted by the first batch's mean (x' = x - shift_x), which keeps the
  // final centring free of cancellation; everything in FP64.
  struct Full {
    torch::Tensor shift_x, shift_y;  // compute dtype [1, p]
    torch::Tensor sum_x, sum_y;      // sum of x', y'
    torch::Tensor cxy, cxx, cyy;     // x'^T y', x'^T x', y'^T y'
    torch::Tensor a_sums;            // [5]: sum a, sum b, sum a*b, sum a^2, sum b^2 with a = |x'|^2, b = |y'|^2
    torch::Tensor ax, ay, bx, by;    // sum a x', sum a y', sum b x', sum b y'
  };
  struct State {
    int64_t p1 = 0, p2 = 0, tokens = 0, batches = 0;
    Minibatch mini;
    Full full;
  };
  bool full_;
  std::vector<std::string> order_;
  std::map<std::string, State> states_;
};

}  // namespace qad::loss
