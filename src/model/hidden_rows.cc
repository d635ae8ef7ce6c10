// tap_hidden_rows (see hidden_rows.h): one autograd node per layer with two outputs, the hidden state passed on
// and its selected rows. A plain autograd Node rather than a custom Function: the engine moves the gradients
// into Node::apply, so the node can tell when it holds the only reference to h's gradient and add the rows into
// it in place (LibTorch 1.13's custom Functions receive copies of the references, which hides that).
#include "model/hidden_rows.h"

#include <torch/csrc/autograd/function.h>

#include <atomic>
#include <utility>

#include "fused/row_add.h"
#include "util/error.h"

namespace qad::model {
namespace {

using torch::autograd::variable_list;

torch::Tensor flat_rows(const torch::Tensor& h) { return h.reshape({-1, h.size(-1)}); }

std::atomic<int64_t> g_in_place{0}, g_copied{0};

// Nothing but this node refers to `g` or its memory (autograd's own InputBuffer makes the same test before it
// accumulates into a gradient in place), and writing into it is a plain dense write.
bool exclusively_owned(const torch::Tensor& g) {
  return g.use_count() == 1 && g.has_storage() && g.storage().use_count() == 1 && g.is_contiguous() &&
         !g.requires_grad() && g.layout() == torch::kStrided;
}

struct TapRowsBackward : public torch::autograd::Node {
  torch::Tensor index;
  std::vector<int64_t> sizes;

  std::string name() const override { return "TapRowsBackward"; }

  variable_list apply(variable_list&& grads) override {
    torch::Tensor g_h = std::move(grads[0]);
    torch::Tensor g_rows = std::move(grads[1]);
    grads.clear();
    if (!g_rows.defined()) return {g_h};
    if (!g_h.defined()) {
      // Nothing downstream read h' (a final hidden state that only the CKA term uses).
      auto z = torch::zeros(sizes, g_rows.options());
      auto flat = flat_rows(z);
      fused::add_rows_(flat, index, g_rows);
      return {z};
    }
    g_rows = g_rows.to(g_h.scalar_type());
    if (exclusively_owned(g_h)) {
      // The usual case in a decoder: the gradient is a fresh sum of the next layer's two uses of h'. Only the
      // selected rows are touched.
      g_in_place.fetch_add(1, std::memory_order_relaxed);
      auto flat = flat_rows(g_h);
      fused::add_rows_(flat, index, g_rows);
      return {g_h};
    }
    // Shared (another node's input, a saved tensor, an expanded view): writing into it could change what
    // another node reads, so add out of place: one pass over h's gradient.
    g_copied.fetch_add(1, std::memory_order_relaxed);
    auto copy = flat_rows(g_h).clone(torch::MemoryFormat::Contiguous);
    fused::add_rows_(copy, index, g_rows);
    return {copy.view(sizes)};
  }

  void release_variables() override { index = torch::Tensor(); }
};

}  // namespace

std::pair<torch::Tensor, torch::Tensor> tap_hidden_rows(const torch::Tensor& h, const torch::Tensor& index,
                                                        const torch::Tensor& into) {
  QAD_CHECK(h.dim() >= 2, "tap_hidden_rows: hidden state must have a feature dimension, got {} dims", h.dim());
  QAD_CHECK(index.scalar_type() == torch::kLong && index.dim() == 1,
            "tap_hidden_rows: index must be int64 [n], got {} with {} dims", c10::toString(index.scalar_type()),
            index.dim());
  const auto idx = index.device() == h.device() ? index : index.to(h.device());
  torch::Tensor rows;
  if (into.defined()) {
    QAD_CHECK(into.dim() == 2 && into.size(0) == idx.size(0) && into.size(1) == h.size(-1) && into.is_contiguous() &&
                  into.scalar_type() == h.scalar_type() && into.device() == h.device(),
              "tap_hidden_rows: the output slice must be a contiguous [{}, {}] tensor of the hidden state's dtype and "
              "device", idx.size(0), h.size(-1));
    torch::NoGradGuard no_grad;
    torch::index_select_out(const_cast<torch::Tensor&>(into), flat_rows(h.detach()), 0, idx);
    rows = into.detach();  // an alias with no view history: its gradient edge below is the only one it has
  } else {
    rows = flat_rows(h.detach()).index_select(0, idx);
  }
  if (!torch::GradMode::is_enabled() || !h.requires_grad()) return {h, rows};
  auto node = std::shared_ptr<TapRowsBackward>(new TapRowsBackward(), torch::autograd::deleteNode);
  node->index = idx;
  node->sizes = h.sizes().vec();
  node->set_next_edges(torch::autograd::collect_next_edges(h));
  // h' shares h's memory and version counter (detach), with this node as its gradient function.
  auto passed = h.detach();
  torch::autograd::create_gradient_edge(passed, node);
  torch::autograd::create_gradient_edge(rows, node);
  return {passed, rows};
}

TapRowsCounts tap_rows_backward_counts() {
  return {g_in_place.load(std::memory_order_relaxed), g_copied.load(std::memory_order_relaxed)};
}

}  // namespace qad::model
