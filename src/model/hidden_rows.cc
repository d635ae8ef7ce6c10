// tap_hidden_rows and add_and_tap_rows (see hidden_rows.h): one autograd node per layer whose outputs are the
// hidden state passed on, its selected rows and (add_and_tap_rows) the state again for the next layer's residual
// add. A plain autograd Node rather than a custom Function: the engine moves the gradients into Node::apply, so
// the node can tell when it holds the only reference to h's gradient and add the rows into it in place (LibTorch
// 1.13's custom Functions receive copies of the references, which hides that).
#include "model/hidden_rows.h"

#include <torch/csrc/autograd/function.h>

#include <atomic>
#include <utility>

#include "fused/add_gather_rows.h"
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

// The gradient of h (tap_hidden_rows) or of a + b (add_and_tap_rows): the passed-on state's gradient with the
// rows' gradient added, given to each of the node's inputs (h; or a and b, since an add gives both operands its
// output's gradient).
// Outputs: the state, its rows, and (add_and_tap_rows) the state again for the next layer's residual, whose
// gradient arrives apart from the first's and is summed here, with the rows, in one pass.
struct TapRowsBackward : public torch::autograd::Node {
  torch::Tensor index;
  torch::Tensor slot_of_row;  // add_and_tap_rows' fused path: add_scatter_rows sums the two gradients and the rows
  std::vector<int64_t> sizes;

  std::string name() const override { return "TapRowsBackward"; }

  variable_list apply(variable_list&& grads) override {
    torch::Tensor g_h = std::move(grads[0]);
    torch::Tensor g_rows = std::move(grads[1]);
    torch::Tensor g_residual = grads.size() > 2 ? std::move(grads[2]) : torch::Tensor();
    grads.clear();
    auto g = g_h.defined() && g_residual.defined()
                 ? sum_with_rows(std::move(g_h), std::move(g_residual), std::move(g_rows))
                 : with_rows(g_h.defined() ? std::move(g_h) : std::move(g_residual), std::move(g_rows));
    return variable_list(num_outputs(), g);
  }

  // g_h + g_residual with the rows' gradient added at their rows: autograd's own sum of two gradients and then
  // with_rows, in one kernel where add_scatter_rows takes them (the same bits: two roundings either way).
  torch::Tensor sum_with_rows(torch::Tensor g_h, torch::Tensor g_residual, torch::Tensor g_rows) const {
    if (g_rows.defined()) g_rows = g_rows.to(g_h.scalar_type()).contiguous();
    const bool fused = g_rows.defined() && slot_of_row.defined() && g_h.sizes() == g_residual.sizes() &&
                       g_h.scalar_type() == g_residual.scalar_type() && g_h.is_contiguous() &&
                       g_residual.is_contiguous() && fused::add_gather_rows_cuda_supports(g_h) &&
                       fused::add_gather_rows_cuda_supports(g_residual) && fused::add_gather_rows_cuda_supports(g_rows);
    if (!fused) {
      // (Moved out of the owned gradient, so that with_rows finds it unshared and adds the rows in place.)
      auto sum = exclusively_owned(g_h)          ? std::move(g_h.add_(g_residual))
                 : exclusively_owned(g_residual) ? std::move(g_residual.add_(g_h))
                                                 : g_h + g_residual;
      return with_rows(std::move(sum), std::move(g_rows));
    }
    // Into whichever gradient nothing else holds (the norm's, usually; the residual's is shared by both operands
    // of the next layer's add), else a new tensor: one pass over the state's gradient either way. The kernel may
    // write into its first operand only, so an owned g_residual goes first (the sum is the same either way).
    if (!exclusively_owned(g_h) && exclusively_owned(g_residual)) std::swap(g_h, g_residual);
    const bool in_place = exclusively_owned(g_h);
    (in_place ? g_in_place : g_copied).fetch_add(1, std::memory_order_relaxed);
    torch::Tensor out = in_place ? std::move(g_h) : torch::empty(g_h.sizes(), g_h.options());
    fused::add_scatter_rows_out(out, in_place ? out : g_h, g_residual, slot_of_row, g_rows);
    return out;
  }

  torch::Tensor with_rows(torch::Tensor g_h, torch::Tensor g_rows) const {
    if (!g_rows.defined()) return g_h;
    if (!g_h.defined()) {
      // Nothing downstream read h' (a final hidden state that only the CKA term uses).
      auto z = torch::zeros(sizes, g_rows.options());
      auto flat = flat_rows(z);
      fused::add_rows_(flat, index, g_rows);
      return z;
    }
    g_rows = g_rows.to(g_h.scalar_type());
    if (exclusively_owned(g_h)) {
      // The usual case in a decoder: the gradient is a fresh sum of the next layer's two uses of h'. Only the
      // selected rows are touched.
      g_in_place.fetch_add(1, std::memory_order_relaxed);
      auto flat = flat_rows(g_h);
      fused::add_rows_(flat, index, g_rows);
      return g_h;
    }
    // Shared (another node's input, a saved tensor, an expanded view): writing into it could change what
    // another node reads, so add out of place: one pass over h's gradient.
    g_copied.fetch_add(1, std::memory_order_relaxed);
    auto copy = flat_rows(g_h).clone(torch::MemoryFormat::Contiguous);
    fused::add_rows_(copy, index, g_rows);
    return copy.view(sizes);
  }

  void release_variables() override {
    index = torch::Tensor();
    slot_of_row = torch::Tensor();
  }
};

void check_index(const torch::Tensor& index, const char* what) {
  QAD_CHECK(index.defined() && index.scalar_type() == torch::kLong && index.dim() == 1,
            "{}: index must be int64 [n], got {} with {} dims", what,
            index.defined() ? c10::toString(index.scalar_type()) : "nothing", index.defined() ? index.dim() : 0);
}

void check_into(const torch::Tensor& into, const torch::Tensor& h, int64_t n, const char* what) {
  QAD_CHECK(into.dim() == 2 && into.size(0) == n && into.size(1) == h.size(-1) && into.is_contiguous() &&
                into.scalar_type() == h.scalar_type() && into.device() == h.device(),
            "{}: the output slice must be a contiguous [{}, {}] tensor of the hidden state's dtype and device", what, n,
            h.size(-1));
}

// Makes `passed` (a tensor of no history sharing the state's memory), `rows` and, if given, `residual` (another
// such tensor) the outputs of a TapRowsBackward whose inputs are `from` (h, or a and b).
void connect(const torch::autograd::variable_list& from, const torch::Tensor& index, const torch::Tensor& slot_of_row,
             torch::Tensor& passed, torch::Tensor& rows, torch::Tensor* residual = nullptr) {
  auto node = std::shared_ptr<TapRowsBackward>(new TapRowsBackward(), torch::autograd::deleteNode);
  node->index = index;
  node->slot_of_row = slot_of_row;
  node->sizes = passed.sizes().vec();
  node->set_next_edges(torch::autograd::collect_next_edges(from));
  torch::autograd::create_gradient_edge(passed, node);
  torch::autograd::create_gradient_edge(rows, node);
  if (residual != nullptr) torch::autograd::create_gradient_edge(*residual, node);
}

// The rows `idx` of `flat` ([N, H], no history), into `into` when given (its storage, with no view history, so
// the node's gradient edge is the only one the rows have), else a new tensor.
torch::Tensor gather_rows(const torch::Tensor& flat, const torch::Tensor& idx, const torch::Tensor& into) {
  torch::NoGradGuard no_grad;
  if (!into.defined()) return flat.index_select(0, idx);
  torch::index_select_out(const_cast<torch::Tensor&>(into), flat, 0, idx);
  return into.detach();
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> tap_hidden_rows(const torch::Tensor& h, const torch::Tensor& index,
                                                        const torch::Tensor& into) {
  QAD_CHECK(h.dim() >= 2, "tap_hidden_rows: hidden state must have a feature dimension, got {} dims", h.dim());
  check_index(index, "tap_hidden_rows");
  const auto idx = index.device() == h.device() ? index : index.to(h.device());
  if (into.defined()) check_into(into, h, idx.size(0), "tap_hidden_rows");
  auto rows = gather_rows(flat_rows(h.detach()), idx, into);
  if (!torch::GradMode::is_enabled() || !h.requires_grad()) return {h, rows};
  // h' shares h's memory and version counter (detach), with the node as its gradient function.
  auto passed = h.detach();
  connect({h}, idx, torch::Tensor(), passed, rows);
  return {passed, rows};
}

TappedSum add_and_tap_rows(const torch::Tensor& a, const torch::Tensor& b, const RowTap& tap) {
  check_index(tap.index, "add_and_tap_rows");
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type() || a.dim() < 2 || b.device() != a.device()) {
    // (Broadcasting or promoting: no layer's add today.) A sum of another dtype than the slice gets rows of its own.
    auto sum = a + b;
    const bool fits = tap.into.defined() && tap.into.scalar_type() == sum.scalar_type();
    auto [passed, rows] = tap_hidden_rows(sum, tap.index, fits ? tap.into : torch::Tensor());
    return {passed, rows, torch::Tensor()};
  }
  const auto idx = tap.index.device() == a.device() ? tap.index : tap.index.to(a.device());
  const int64_t n = idx.size(0);
  if (tap.into.defined()) check_into(tap.into, a, n, "add_and_tap_rows");
  const bool fused = tap.slot_of_row.defined() && a.is_contiguous() && b.is_contiguous() &&
                     tap.slot_of_row.device() == a.device() && fused::add_gather_rows_cuda_supports(a) &&
                     fused::add_gather_rows_cuda_supports(b) &&
                     (!tap.into.defined() || fused::add_gather_rows_cuda_supports(tap.into));
  TappedSum t;
  {
    torch::NoGradGuard no_grad;
    if (fused) {
      t.sum = torch::empty(a.sizes(), a.options().requires_grad(false));
      t.rows = tap.into.defined() ? tap.into.detach() : torch::empty({n, a.size(-1)}, t.sum.options());
      fused::add_gather_rows_out(t.sum, a.detach(), b.detach(), tap.slot_of_row, t.rows);
    } else {
      t.sum = a.detach() + b.detach();
      t.rows = gather_rows(flat_rows(t.sum), idx, tap.into);
    }
  }
  if (torch::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad())) {
    t.residual = t.sum.detach();  // the same memory, a second output of the node
    connect({a, b}, idx, fused ? tap.slot_of_row : torch::Tensor(), t.sum, t.rows, &t.residual);
  }
  return t;
}

TapRowsCounts tap_rows_backward_counts() {
  return {g_in_place.load(std::memory_order_relaxed), g_copied.load(std::memory_order_relaxed)};
}

}  // namespace qad::model
