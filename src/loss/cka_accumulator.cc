// CkaAccumulator: minibatch HSIC averages (host doubles) and exact full-dataset sufficient statistics (FP64 on
// the data's device). The full-dataset debiased estimator needs sum_i |xc_i|^2 |yc_i|^2 with the *global* mean,
// which expands into the moments kept in Full (docs/losses.md derives it).
#include "loss/cka_accumulator.h"

#include <cmath>

#include "loss/token_rows.h"
#include "util/error.h"

namespace qad::loss {
namespace {

torch::Tensor flat_rows(const torch::Tensor& t) { return t.dim() == 2 ? t : t.reshape({-1, t.size(-1)}); }

torch::Tensor f64(const torch::Tensor& t) { return t.to(torch::kFloat64); }

double debiased_dps(double prod, double s_dot, double nx, double ny, double n) {
  return prod - n / (n - 2) * s_dot + nx * ny / ((n - 1) * (n - 2));
}

}  // namespace

void CkaAccumulator::add(const std::string& layer, const torch::Tensor& x, const torch::Tensor& y,
                         const torch::Tensor& mask) {
  torch::NoGradGuard no_grad;
  QAD_CHECK(x.defined() && y.defined() && (x.dim() == 2 || x.dim() == 3) && x.dim() == y.dim() &&
                x.sizes().slice(0, x.dim() - 1) == y.sizes().slice(0, y.dim() - 1),
            "CkaAccumulator: layer '{}': x {} and y {} must be [B, T, H] or [n, H] over the same tokens", layer,
            x.defined() ? detail::shape_str(x.sizes()) : "(undefined)",
            y.defined() ? detail::shape_str(y.sizes()) : "(undefined)");
  QAD_CHECK(x.is_floating_point() && y.is_floating_point() && x.device() == y.device(),
            "CkaAccumulator: layer '{}': x and y must be floating point on one device", layer);
  auto keep = detail::mask_to_keep(mask, x.sizes().slice(0, x.dim() - 1), "CkaAccumulator");
  if (keep.defined()) keep = keep.to(x.device());
  auto xr = flat_rows(x), yr = flat_rows(y);
  auto rows = detail::select_rows(keep, xr.size(0));
  if (rows.count == 0) return;
  xr = rows.take(xr, 0, rows.count);
  yr = rows.take(yr, 0, rows.count);

  auto [it, inserted] = states_.try_emplace(layer);
  State& st = it->second;
  if (inserted) {
    order_.push_back(layer);
    st.p1 = xr.size(1);
    st.p2 = yr.size(1);
  }
  QAD_CHECK(st.p1 == xr.size(1) && st.p2 == yr.size(1),
            "CkaAccumulator: layer '{}' had hidden sizes {} / {} and now {} / {}", layer, st.p1, st.p2, xr.size(1),
            yr.size(1));
  const int64_t n = rows.count;
  st.tokens += n;
  st.batches += 1;

  for (auto est : {CkaEstimator::kBiased, CkaEstimator::kDebiased}) {
    const bool debiased = est == CkaEstimator::kDebiased;
    if (n < (debiased ? 4 : 2)) continue;
    const HsicTerms h = hsic_terms(xr, yr, est);
    auto v = torch::tensor({h.xy, h.xx, h.yy}, torch::kFloat64);
    auto& sum = debiased ? st.mini.debiased : st.mini.biased;
    sum = sum.defined() ? sum + v : v;
    (debiased ? st.mini.n_debiased : st.mini.n_biased) += 1;
  }

  if (!full_) return;
  const auto ct = xr.scalar_type() == torch::kFloat64 || yr.scalar_type() == torch::kFloat64 ? torch::kFloat64
                                                                                               : torch::kFloat32;
  Full& f = st.full;
  auto xs = xr.to(ct), ys = yr.to(ct);
  if (!f.shift_x.defined()) {
    f.shift_x = xs.mean(0, true);
    f.shift_y = ys.mean(0, true);
  }
  xs = xs - f.shift_x;
  ys = ys - f.shift_y;
  auto a = xs.square().sum(1), b = ys.square().sum(1);
  auto accumulate = [](torch::Tensor& acc, const torch::Tensor& v) { acc = acc.defined() ? acc.add_(f64(v)) : f64(v); };
  accumulate(f.sum_x, xs.sum(0));
  accumulate(f.sum_y, ys.sum(0));
  accumulate(f.cxy, xs.t().mm(ys));
  accumulate(f.cxx, xs.t().mm(xs));
  accumulate(f.cyy, ys.t().mm(ys));
  auto ad = f64(a), bd = f64(b);
  accumulate(f.a_sums, torch::stack({ad.sum(), bd.sum(), ad.dot(bd), ad.dot(ad), bd.dot(bd)}));
  accumulate(f.ax, xs.t().mv(a));
  accumulate(f.ay, ys.t().mv(a));
  accumulate(f.bx, xs.t().mv(b));
  accumulate(f.by, ys.t().mv(b));
}

std::vector<LayerCka> CkaAccumulator::result() const {
  torch::NoGradGuard no_grad;
  std::vector<LayerCka> out;
  for (const auto& name : order_) {
    const State& st = states_.at(name);
    LayerCka r;
    r.layer = name;
    r.tokens = st.tokens;
    r.batches = st.batches;
    auto mini_cka = [](const torch::Tensor& sum) {
      auto v = sum.accessor<double, 1>();  // the batch count cancels in xy / sqrt(xx * yy)
      return v[0] / std::sqrt(v[1] * v[2]);
    };
    if (st.mini.n_biased > 0) r.minibatch_biased = mini_cka(st.mini.biased);
    if (st.mini.n_debiased > 0) r.minibatch_debiased = mini_cka(st.mini.debiased);

    const Full& f = st.full;
    const double n = static_cast<double>(st.tokens);
    if (full_ && f.cxy.defined() && st.tokens >= 2) {
      auto mu = f.sum_x / n, nu = f.sum_y / n;
      auto sq = [](const torch::Tensor& m) { return m.square().sum().item<double>(); };
      const double prod = sq(f.cxy - n * torch::outer(mu, nu));
      const double prod_x = sq(f.cxx - n * torch::outer(mu, mu));
      const double prod_y = sq(f.cyy - n * torch::outer(nu, nu));
      r.full_biased = prod / std::sqrt(prod_x * prod_y);
      if (st.tokens >= 4) {
        auto s = f.a_sums.cpu();
        auto sa = s.accessor<double, 1>();
        const double sum_a = sa[0], sum_b = sa[1], s_ab = sa[2], s_aa = sa[3], s_bb = sa[4];
        const double mx = mu.dot(mu).item<double>(), my = nu.dot(nu).item<double>();
        const double nx = sum_a - n * mx, ny = sum_b - n * my;
        // sum_i (a_i - 2 x'_i.mu + mx)(b_i - 2 y'_i.nu + my), and the x-x / y-y versions
        const double sxy = s_ab - 2 * nu.dot(f.ay).item<double>() - 2 * mu.dot(f.bx).item<double>() +
                           4 * mu.dot(f.cxy.mv(nu)).item<double>() + my * sum_a + mx * sum_b - 3 * n * mx * my;
        const double sxx = s_aa - 4 * mu.dot(f.ax).item<double>() + 4 * mu.dot(f.cxx.mv(mu)).item<double>() +
                           2 * mx * sum_a - 3 * n * mx * mx;
        const double syy = s_bb - 4 * nu.dot(f.by).item<double>() + 4 * nu.dot(f.cyy.mv(nu)).item<double>() +
                           2 * my * sum_b - 3 * n * my * my;
        r.full_debiased = debiased_dps(prod, sxy, nx, ny, n) /
                          std::sqrt(debiased_dps(prod_x, sxx, nx, nx, n) * debiased_dps(prod_y, syy, ny, ny, n));
      }
    }
    out.push_back(r);
  }
  return out;
}

}  // namespace qad::loss
