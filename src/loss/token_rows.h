// Which rows (tokens) of a flattened [N, ...] tensor take part in a loss, and how to read / write them
// chunk by chunk. Internal to qad_loss: KL, cross-entropy and CKA select tokens the same way.
#pragma once
#include <torch/torch.h>

#include <string>

#include "util/error.h"

namespace qad::loss::detail {

struct TokenRows {
  torch::Tensor index;  // int64 [count] on the data's device; undefined when every row takes part
  int64_t count = 0;

  // Rows [begin, begin+len) of the selection, gathered from a [N, ...] tensor.
  torch::Tensor take(const torch::Tensor& rows, int64_t begin, int64_t len) const {
    if (!index.defined()) return rows.narrow(0, begin, len);
    return rows.index_select(0, index.narrow(0, begin, len));
  }
  // Writes `values` into rows [begin, begin+len) of the selection in `out` ([N, ...]).
  void put(torch::Tensor& out, int64_t begin, int64_t len, const torch::Tensor& values) const {
    if (!index.defined()) {
      out.narrow(0, begin, len).copy_(values);
    } else {
      out.index_copy_(0, index.narrow(0, begin, len), values.to(out.scalar_type()));
    }
  }
};

// The rows where `keep` (bool [N]) is true; all rows (no index) when `keep` is undefined or all true.
inline TokenRows select_rows(const torch::Tensor& keep, int64_t n_rows) {
  TokenRows r;
  if (!keep.defined()) {
    r.count = n_rows;
    return r;
  }
  auto idx = keep.reshape({-1}).nonzero().reshape({-1});
  r.count = idx.size(0);
  if (r.count != n_rows) r.index = idx;
  return r;
}

// mask [leading dims of data] (any dtype, nonzero = take part) as bool [N], or undefined.
inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out.push_back(',');
    out.append(std::to_string(s[i]));
  }
  return out + "]";
}

inline torch::Tensor mask_to_keep(const torch::Tensor& mask, at::IntArrayRef leading, const char* what) {
  if (!mask.defined()) return {};
  QAD_CHECK(mask.sizes() == leading, "{}: mask has shape {} but the data's token dimensions are {}; pass a mask "
            "of the token shape (or an undefined tensor for all tokens)",
            what, shape_str(mask.sizes()), shape_str(leading));
  return mask.reshape({-1}) != 0;
}

}  // namespace qad::loss::detail
