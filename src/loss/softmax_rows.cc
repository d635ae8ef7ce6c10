// Argument checks, dispatch, and the plain loop reference of the per-row softmax losses (softmax_rows.h).
#include "loss/softmax_rows.h"

#include <cmath>
#include <limits>
#include <vector>

#include "util/error.h"

namespace qad::loss::kernels {

void softmax_rows_reference(SoftmaxRows& a) {
  // Everything in double from the logits' values; the outputs are rounded once when they are stored.
  const auto f64 = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat64).contiguous(); };
  const int64_t rows = a.student.size(0), V = a.student.size(1);
  const double lowest = std::numeric_limits<float>::lowest(), inv_t = 1.0 / a.temperature;
  const bool kl = a.teacher.defined(), ce = a.labels.defined(), grad = a.grad.defined();
  auto s = f64(a.student), t = kl ? f64(a.teacher) : torch::Tensor();
  auto lab = ce ? a.labels.to(torch::kCPU, torch::kInt64).contiguous() : torch::Tensor();
  auto ckl = grad && kl ? f64(a.kl_coef) : torch::Tensor();
  auto cce = grad && a.ce_coef.defined() ? f64(a.ce_coef) : torch::Tensor();
  auto kl_out = torch::zeros({rows}, torch::kFloat64), ce_out = torch::zeros({rows}, torch::kFloat64);
  auto g = grad ? torch::zeros({rows, V}, torch::kFloat64) : torch::Tensor();
  std::vector<double> lps(V), lpt(V);
  // log softmax of x / T, clamped to the lowest float (as finite_log_softmax): -inf logits give exp() = 0.
  auto log_softmax = [&](const double* x, std::vector<double>& out) {
    double m = -INFINITY;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, x[v] * inv_t);
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(x[v] * inv_t - m);
    const double lse = m + std::log(z);
    for (int64_t v = 0; v < V; ++v) {
      const double l = x[v] * inv_t - lse;
      out[v] = l < lowest ? lowest : l;  // NaN stays NaN
    }
  };
  for (int64_t r = 0; r < rows; ++r) {
    log_softmax(s.data_ptr<double>() + r * V, lps);
    if (kl) {
      log_softmax(t.data_ptr<double>() + r * V, lpt);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(lpt[v]) * (lpt[v] - lps[v]);
      kl_out[r] = sum;
    }
    const int64_t label = ce ? lab.data_ptr<int64_t>()[r] : -1;
    if (ce) ce_out[r] = -lps[label];
    if (!grad) continue;
    const double akl = kl ? ckl.data_ptr<double>()[r] : 0.0, ace = cce.defined() ? cce.data_ptr<double>()[r] : 0.0;
    double* gr = g.data_ptr<double>() + r * V;
    for (int64_t v = 0; v < V; ++v) {
      const double ps = std::exp(lps[v]);
      double d = 0;
      if (kl) d += akl * (ps - std::exp(lpt[v]));
      if (cce.defined()) d += ace * (ps - (v == label ? 1.0 : 0.0));
      gr[v] = d;
    }
  }
  if (kl) a.kl.copy_(kl_out);
  if (ce) a.ce.copy_(ce_out);
  if (grad) a.grad.copy_(g);
}

void softmax_rows(SoftmaxRows& a) {
  const auto& s = a.student;
  QAD_CHECK(s.defined() && s.dim() == 2 && s.is_contiguous(), "softmax_rows: student logits must be contiguous [rows, V]");
  const auto dt = s.scalar_type();
  QAD_CHECK(dt == torch::kFloat32 || dt == torch::kBFloat16 || dt == torch::kFloat16,
            "softmax_rows: logits must be float32, bfloat16 or float16");
  QAD_CHECK(a.temperature > 0, "softmax_rows: temperature must be > 0");
  const int64_t rows = s.size(0);
  auto check_rows = [&](const torch::Tensor& t, torch::ScalarType type, const char* what) {
    QAD_CHECK(t.defined() && t.dim() == 1 && t.size(0) == rows && t.scalar_type() == type && t.is_contiguous() &&
                  t.device() == s.device(),
              "softmax_rows: {} must be a contiguous [rows] tensor of the right dtype on the logits' device", what);
  };
  if (a.teacher.defined()) {
    QAD_CHECK(a.teacher.sizes() == s.sizes() && a.teacher.scalar_type() == dt && a.teacher.is_contiguous() &&
                  a.teacher.device() == s.device(),
              "softmax_rows: teacher logits must match the student's shape, dtype and device");
    check_rows(a.kl, torch::kFloat32, "kl");
    if (a.grad.defined()) check_rows(a.kl_coef, torch::kFloat32, "kl_coef");
  }
  if (a.labels.defined()) {
    QAD_CHECK(a.temperature == 1.0, "softmax_rows: cross-entropy needs temperature 1 (its log-softmax is the KL's)");
    check_rows(a.labels, torch::kInt64, "labels");
    check_rows(a.ce, torch::kFloat32, "ce");
    if (a.grad.defined() && a.ce_coef.defined()) check_rows(a.ce_coef, torch::kFloat32, "ce_coef");
  } else {
    QAD_CHECK(!a.ce_coef.defined(), "softmax_rows: ce_coef needs labels");
  }
  if (a.grad.defined()) {
    QAD_CHECK(a.grad.sizes() == s.sizes() && a.grad.scalar_type() == dt && a.grad.is_contiguous() &&
                  a.grad.device() == s.device(),
              "softmax_rows: grad must be contiguous, of the logits' shape, dtype and device");
  }
#ifdef QAD_HAS_CUDA
  if (s.is_cuda()) return softmax_rows_cuda(a);
#endif
  softmax_rows_reference(a);
}

}  // namespace qad::loss::kernels
