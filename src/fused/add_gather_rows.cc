// add_gather_rows_out and add_scatter_rows_out (add_gather_rows.h): checks, dispatch to the CUDA kernels, and the
// plain loop references.
#include "fused/add_gather_rows.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "util/error.h"

namespace qad::fused {
namespace kernels {
#ifdef QAD_HAS_CUDA
// add_gather_rows_cuda.cu: the gather (gather = true) or the scatter; rows is written only by the gather.
void add_rows_pass_cuda(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                        const torch::Tensor& slot_of_row, const torch::Tensor& rows, bool gather);
#endif
}  // namespace kernels

namespace {

void check(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& slot_of_row,
           const torch::Tensor& rows) {
  QAD_CHECK(a.defined() && b.defined() && out.defined() && a.dim() >= 1 && a.sizes() == b.sizes() &&
                a.sizes() == out.sizes(),
            "add_gather_rows: a, b and out must have one shape");
  QAD_CHECK(a.is_contiguous() && b.is_contiguous() && out.is_contiguous(), "add_gather_rows: a, b and out must be contiguous");
  QAD_CHECK(a.is_floating_point() && b.scalar_type() == a.scalar_type() && out.scalar_type() == a.scalar_type(),
            "add_gather_rows: a, b and out must have one floating dtype");
  QAD_CHECK(b.device() == a.device() && out.device() == a.device(), "add_gather_rows: a, b and out must be on one device");
  const int64_t H = a.size(-1), N = H == 0 ? 0 : a.numel() / H;
  QAD_CHECK(slot_of_row.defined() && slot_of_row.dim() == 1 && slot_of_row.size(0) == N &&
                slot_of_row.scalar_type() == torch::kInt && slot_of_row.device() == a.device() &&
                slot_of_row.is_contiguous(),
            "add_gather_rows: slot_of_row must be a contiguous int32 [{}] tensor on a's device", N);
  QAD_CHECK(rows.defined() && rows.dim() == 2 && rows.size(1) == H && rows.is_contiguous() &&
                rows.scalar_type() == a.scalar_type() && rows.device() == a.device(),
            "add_gather_rows: rows must be a contiguous [n, {}] tensor of a's dtype and device", H);
}

}  // namespace

bool add_gather_rows_cuda_supports(const torch::Tensor& a) {
#ifdef QAD_HAS_CUDA
  const auto dt = a.scalar_type();
  if (!a.is_cuda() || (dt != torch::kFloat32 && dt != torch::kBFloat16 && dt != torch::kFloat16)) return false;
  return a.dim() >= 1 && (a.size(-1) * static_cast<int64_t>(a.element_size())) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.data_ptr()) % 16 == 0;
#else
  (void)a;
  return false;
#endif
}

namespace {

// The references' loop: out = a + b rounded once, then per sampled row either rows[slot] = out[r] (gather) or
// out[r] = out[r] + rows[slot] rounded once more (scatter). Sums in float (double for FP64), as ATen's adds;
// c10's conversions round to nearest even, as the kernels' stores do.
// (rows: a handle of the caller's tensor, written into by the gather.)
void reference_loop(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& slot_of_row,
                    torch::Tensor rows, bool gather) {
  const int64_t H = a.size(-1), N = H == 0 ? 0 : a.numel() / H, n = rows.size(0);
  auto slots = slot_of_row.to(torch::kCPU).contiguous();
  const int32_t* sp = slots.data_ptr<int32_t>();
  for (int64_t r = 0; r < N; ++r) {
    QAD_CHECK(sp[r] >= -1 && sp[r] < n, "add_gather_rows: row {} has slot {}, outside [-1, {})", r, sp[r], n);
  }
  auto loop = [&](auto tag) {
    using T = decltype(tag);
    using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
    auto ac = a.to(torch::kCPU).contiguous(), bc = b.to(torch::kCPU).contiguous();
    auto oc = torch::empty(ac.sizes(), ac.options());
    auto rc = rows.to(torch::kCPU).contiguous().clone();
    const T* ap = ac.data_ptr<T>();
    const T* bp = bc.data_ptr<T>();
    T* op = oc.data_ptr<T>();
    T* rp = rc.data_ptr<T>();
    for (int64_t r = 0; r < N; ++r) {
      for (int64_t j = 0; j < H; ++j) {
        T& o = op[r * H + j];
        o = static_cast<T>(static_cast<Acc>(ap[r * H + j]) + static_cast<Acc>(bp[r * H + j]));
        if (sp[r] < 0) continue;
        T& row = rp[sp[r] * H + j];
        if (gather) {
          row = o;
        } else {
          o = static_cast<T>(static_cast<Acc>(o) + static_cast<Acc>(row));
        }
      }
    }
    out.copy_(oc);
    if (gather) rows.copy_(rc);
  };
  switch (a.scalar_type()) {
    case torch::kFloat64: loop(double{}); break;
    case torch::kFloat32: loop(float{}); break;
    case torch::kBFloat16: loop(c10::BFloat16{}); break;
    case torch::kFloat16: loop(c10::Half{}); break;
    default: fail("add_gather_rows: unsupported dtype {}", c10::toString(a.scalar_type()));
  }
}

// The CUDA kernel where it takes a, else the reference loop.
torch::Tensor& dispatch(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                        const torch::Tensor& slot_of_row, const torch::Tensor& rows, bool gather) {
  check(out, a, b, slot_of_row, rows);
#ifdef QAD_HAS_CUDA
  if (add_gather_rows_cuda_supports(a)) {
    kernels::add_rows_pass_cuda(out, a, b, slot_of_row, rows, gather);
    return out;
  }
#endif
  reference_loop(out, a, b, slot_of_row, rows, gather);
  return out;
}

}  // namespace

torch::Tensor& add_gather_rows_out(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                                   const torch::Tensor& slot_of_row, torch::Tensor& rows) {
  return dispatch(out, a, b, slot_of_row, rows, /*gather=*/true);
}

torch::Tensor& add_scatter_rows_out(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                                    const torch::Tensor& slot_of_row, const torch::Tensor& rows) {
  return dispatch(out, a, b, slot_of_row, rows, /*gather=*/false);
}

void add_gather_rows_reference(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                               const torch::Tensor& slot_of_row, torch::Tensor& rows) {
  check(out, a, b, slot_of_row, rows);
  reference_loop(out, a, b, slot_of_row, rows, /*gather=*/true);
}

void add_scatter_rows_reference(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                                const torch::Tensor& slot_of_row, const torch::Tensor& rows) {
  check(out, a, b, slot_of_row, rows);
  reference_loop(out, a, b, slot_of_row, rows, /*gather=*/false);
}

torch::Tensor slots_of_rows(const torch::Tensor& index, int64_t rows) {
  QAD_CHECK(index.defined() && index.dim() == 1 && index.scalar_type() == torch::kLong,
            "slots_of_rows: index must be int64 [n]");
  auto opts = index.options().dtype(torch::kInt);
  auto slots = torch::full({rows}, -1, opts);
  slots.index_copy_(0, index, torch::arange(index.size(0), opts));
  return slots;
}

}  // namespace qad::fused
