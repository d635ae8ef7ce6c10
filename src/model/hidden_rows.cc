// tap_hidden_rows (see hidden_rows.h): one autograd node per layer with two outputs, the hidden state passed on
// and its selected rows.
#include "model/hidden_rows.h"

#include "util/error.h"

namespace qad::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

torch::Tensor flat_rows(const torch::Tensor& h) { return h.reshape({-1, h.size(-1)}); }

struct TapRows : public torch::autograd::Function<TapRows> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& h, const torch::Tensor& index) {
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined, not a zero tensor
    ctx->save_for_backward({index});
    ctx->saved_data["sizes"] = h.sizes().vec();
    // h is returned as it is; autograd makes the output a view of it and gives that view this node.
    return {h, flat_rows(h).index_select(0, index)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto index = ctx->get_saved_variables()[0];
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    auto& g_h = grads[0];
    auto& g_rows = grads[1];
    if (!g_rows.defined()) return {g_h, torch::Tensor()};
    if (!g_h.defined()) {
      // Nothing downstream read h' (a final hidden state that only the CKA term uses).
      auto z = torch::zeros(sizes, g_rows.options());
      return {flat_rows(z).index_add_(0, index, g_rows).view(sizes), torch::Tensor()};
    }
    // Out of place: the gradient the engine hands over may be referenced elsewhere, and writing into it could
    // change another node's input. One copy still saves the zero tensor and the separate accumulation.
    auto out = flat_rows(g_h).index_add(0, index, g_rows.to(g_h.scalar_type()));
    return {out.view(sizes), torch::Tensor()};
  }
};

}  // namespace

std::pair<torch::Tensor, torch::Tensor> tap_hidden_rows(const torch::Tensor& h, const torch::Tensor& index) {
  QAD_CHECK(h.dim() >= 2, "tap_hidden_rows: hidden state must have a feature dimension, got {} dims", h.dim());
  QAD_CHECK(index.scalar_type() == torch::kLong && index.dim() == 1,
            "tap_hidden_rows: index must be int64 [n], got {} with {} dims", c10::toString(index.scalar_type()),
            index.dim());
  const auto idx = index.device() == h.device() ? index : index.to(h.device());
  if (!torch::GradMode::is_enabled() || !h.requires_grad()) return {h, flat_rows(h).index_select(0, idx)};
  auto out = TapRows::apply(h, idx);
  return {out[0], out[1]};
}

}  // namespace qad::model
