// stack_rows (stacked_rows.h): a view of the buffer the rows already lie in, with a plain autograd Node (the
// gradient's slices to each row's own gradient function) in place of StackBackward.
#include "loss/stacked_rows.h"

#include <torch/csrc/autograd/function.h>

#include <atomic>

namespace qad::loss {
namespace {

using torch::autograd::variable_list;

std::atomic<int64_t> g_views{0}, g_copies{0};

struct StackedRowsBackward : public torch::autograd::Node {
  int64_t count = 0;

  std::string name() const override { return "StackedRowsBackward"; }

  variable_list apply(variable_list&& grads) override {
    variable_list out(static_cast<size_t>(count));
    if (!grads[0].defined()) return out;
    for (int64_t i = 0; i < count; ++i) {
      if (should_compute_output(static_cast<size_t>(i))) out[static_cast<size_t>(i)] = grads[0].select(0, i);
    }
    return out;
  }
};

// The storage distance between consecutive slices (one slice's size when there is only one).
int64_t slice_step(const std::vector<torch::Tensor>& rows) {
  return rows.size() > 1 ? rows[1].storage_offset() - rows[0].storage_offset() : rows[0].numel();
}

}  // namespace

bool rows_are_consecutive_slices(const std::vector<torch::Tensor>& rows) {
  if (rows.empty()) return false;
  const auto& first = rows[0];
  if (!first.defined() || first.dim() != 2 || !first.is_contiguous() || !first.has_storage() || first.numel() == 0) {
    return false;
  }
  // A uniform step between the slices, at least one slice long: rows gathered with scratch rows between them
  // (model::ForwardOutput::hidden_scratch_rows) stack as a view as well.
  const int64_t step = slice_step(rows);
  if (step < first.numel()) return false;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    if (!r.defined() || r.sizes() != first.sizes() || r.scalar_type() != first.scalar_type() ||
        r.device() != first.device() || !r.is_contiguous() || !r.has_storage() || !r.is_alias_of(first) ||
        r.storage_offset() != first.storage_offset() + static_cast<int64_t>(i) * step) {
      return false;
    }
  }
  // The view must stay inside the storage (a truncated buffer would be a bug of the caller, not a reason to read
  // past the end).
  const int64_t end =
      (first.storage_offset() + static_cast<int64_t>(rows.size() - 1) * step + first.numel()) * first.element_size();
  return end <= static_cast<int64_t>(first.storage().nbytes());
}

torch::Tensor stack_rows(const std::vector<torch::Tensor>& rows) {
  if (!rows_are_consecutive_slices(rows)) {
    g_copies.fetch_add(1, std::memory_order_relaxed);
    return torch::stack(rows);
  }
  g_views.fetch_add(1, std::memory_order_relaxed);
  const auto& first = rows[0];
  const int64_t count = static_cast<int64_t>(rows.size()), n = first.size(0), h = first.size(1);
  const int64_t step = slice_step(rows);
  torch::Tensor stacked;
  {
    torch::NoGradGuard no_grad;
    stacked = first.detach().as_strided({count, n, h}, {step, h, 1}, first.storage_offset()).detach();
  }
  bool any_grad = false;
  for (const auto& r : rows) any_grad = any_grad || r.requires_grad();
  if (!any_grad || !torch::GradMode::is_enabled()) return stacked;
  auto node = std::shared_ptr<StackedRowsBackward>(new StackedRowsBackward(), torch::autograd::deleteNode);
  node->count = count;
  node->set_next_edges(torch::autograd::collect_next_edges(rows));
  torch::autograd::create_gradient_edge(stacked, node);
  return stacked;
}

StackRowsCounts stack_rows_counts() {
  return {g_views.load(std::memory_order_relaxed), g_copies.load(std::memory_order_relaxed)};
}

}  // namespace qad::loss
