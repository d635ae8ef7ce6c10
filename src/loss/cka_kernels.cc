// Argument checks, dispatch and the plain loop references of the CKA passes (cka_kernels.h).
#include "loss/cka_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "util/error.h"
#include "util/torch_compat.h"

namespace qad::loss::kernels {
namespace {

void check_centre(const CentreColumns& a) {
  const auto& x = a.x;
  QAD_CHECK(x.defined() && x.dim() == 3 && x.is_contiguous() && x.size(1) >= 1,
            "centre_columns: x must be a contiguous [layers, rows, features] tensor with at least one row");
  const auto dt = x.scalar_type();
  QAD_CHECK(dt == torch::kFloat32 || dt == torch::kBFloat16 || dt == torch::kFloat16,
            "centre_columns: x must be float32, bfloat16 or float16, got {}", c10::toString(dt));
  QAD_CHECK(a.centred.defined() && a.centred.sizes() == x.sizes() &&
                (a.centred.scalar_type() == torch::kFloat32 || a.centred.scalar_type() == torch::kBFloat16) &&
                a.centred.is_contiguous() && a.centred.device() == x.device(),
            "centre_columns: centred must be a contiguous float32 or bfloat16 tensor of x's shape on x's device");
  QAD_CHECK(a.mean.defined() && a.mean.dim() == 3 && a.mean.size(0) == x.size(0) && a.mean.size(1) == 1 &&
                a.mean.size(2) == x.size(2) && a.mean.scalar_type() == torch::kFloat32 && a.mean.is_contiguous() &&
                a.mean.device() == x.device(),
            "centre_columns: mean must be a contiguous float32 [layers, 1, features] tensor on x's device");
}

void check_pair_sums(const PairSums& s) {
  QAD_CHECK(s.a.defined() && s.b.defined() && s.a.dim() == 3 && s.a.sizes() == s.b.sizes() &&
                s.a.scalar_type() == torch::kFloat32 && s.b.scalar_type() == torch::kFloat32 &&
                s.a.is_contiguous() && s.b.is_contiguous() && s.a.device() == s.b.device(),
            "pair_sums: a and b must be contiguous float32 [layers, rows, cols] tensors of one shape on one device");
  QAD_CHECK(s.out.defined() && s.out.dim() == 2 && s.out.size(0) == s.a.size(0) && s.out.size(1) == 3 &&
                s.out.scalar_type() == torch::kFloat64 && s.out.is_contiguous() && s.out.device() == s.a.device(),
            "pair_sums: out must be a contiguous float64 [layers, 3] tensor on the inputs' device");
}

// A contiguous float32 tensor of the given shape on `device`.
bool is_f32(const torch::Tensor& t, at::IntArrayRef shape, const torch::Device& device) {
  return t.defined() && t.sizes() == shape && t.scalar_type() == torch::kFloat32 && t.is_contiguous() &&
         t.device() == device;
}

// The strips of an [L, n, n] Gram matrix (GramStrips): nb <= kMaxGramStrips contiguous float32 tensors on one
// device, strip b [L, block, n - b * block], nb * block = n >= 1.
void check_gram(const GramStrips& g, const char* what) {
  const auto& s = g.strips;
  const bool first_ok = !s.empty() && s[0].defined() && s[0].dim() == 3 && s[0].size(1) >= 1;
  const int64_t nb = static_cast<int64_t>(s.size());
  QAD_CHECK(first_ok && nb <= kMaxGramStrips && g.block() * nb == g.n(),
            "{}: the Gram matrices must be float32 [layers, n, n] tensors (n >= 1) or at most {} strips of one "
            "(GramStrips), got {} tensor(s)", what, kMaxGramStrips, nb);
  for (int64_t b = 0; b < nb; ++b) {
    const auto& t = s[static_cast<size_t>(b)];
    const int64_t width = g.n() - b * g.block();
    const bool ok = t.defined() && t.dim() == 3 && t.size(0) == s[0].size(0) && t.size(1) == g.block() &&
                    t.size(2) == width && t.scalar_type() == torch::kFloat32 && t.device() == s[0].device() &&
                    t.stride(2) == 1 && t.stride(1) >= width && t.stride(0) >= g.block() * t.stride(1);
    QAD_CHECK(ok, "{}: strip {} of the Gram matrix must be a float32 [layers, {}, {}] tensor with contiguous rows "
              "on the first's device", what, b, g.block(), width);
  }
}

bool same_layout(const GramStrips& a, const GramStrips& b) {
  return a.strips.size() == b.strips.size() && a.n() == b.n() && a.block() == b.block() &&
         a.strips[0].size(0) == b.strips[0].size(0) && a.strips[0].device() == b.strips[0].device();
}

void check_gram_sums(const GramSums& g) {
  check_gram(g.k, "centred_gram_sums");
  check_gram(g.l, "centred_gram_sums");
  QAD_CHECK(same_layout(g.k, g.l), "centred_gram_sums: k and l must have one shape, strip layout and device");
  const int64_t L = g.k.strips[0].size(0), n = g.k.n();
  const auto dev = g.k.strips[0].device();
  QAD_CHECK(g.sums.defined() && g.sums.dim() == 2 && g.sums.size(0) == L && g.sums.size(1) == 3 &&
                g.sums.scalar_type() == torch::kFloat64 && g.sums.is_contiguous() && g.sums.device() == dev,
            "centred_gram_sums: sums must be a contiguous float64 [layers, 3] tensor on the kernels' device");
  QAD_CHECK(is_f32(g.k_row_means, {L, n}, dev) && is_f32(g.l_row_means, {L, n}, dev) && is_f32(g.k_mean, {L}, dev) &&
                is_f32(g.l_mean, {L}, dev),
            "centred_gram_sums: the row means must be contiguous float32 [layers, n] and the means float32 [layers] "
            "tensors on the kernels' device");
  QAD_CHECK(g.cka.defined() == g.cka_float.defined() &&
                (!g.cka.defined() || (g.cka.dim() == 1 && g.cka.size(0) == L && g.cka.is_contiguous() &&
                                      g.cka.scalar_type() == torch::kFloat64 && g.cka.device() == dev &&
                                      is_f32(g.cka_float, {L}, dev))),
            "centred_gram_sums: cka and cka_float must both be given (contiguous float64 and float32 [layers] tensors "
            "on the kernels' device) or neither");
}

void check_combine(const CombineKernels& c) {
  check_gram(c.own.gram, "combine_kernels");
  check_gram(c.other.gram, "combine_kernels");
  QAD_CHECK(same_layout(c.own.gram, c.other.gram),
            "combine_kernels: the two Gram matrices must have one shape, strip layout and device");
  const int64_t L = c.own.gram.strips[0].size(0), n = c.own.gram.n();
  const auto dev = c.own.gram.strips[0].device();
  for (const auto* side : {&c.own, &c.other}) {
    QAD_CHECK(is_f32(side->row_means, {L, n}, dev) && is_f32(side->mean, {L}, dev),
              "combine_kernels: row means must be contiguous float32 [layers, n] and means float32 [layers] tensors "
              "on the kernels' device");
  }
  QAD_CHECK(is_f32(c.beta, {L}, dev) && is_f32(c.alpha, {L}, dev),
            "combine_kernels: beta and alpha must be contiguous float32 [layers] tensors on the kernels' device");
  QAD_CHECK(c.out.defined() && c.out.dim() == 3 && c.out.size(0) == L && c.out.size(1) == n && c.out.size(2) >= n &&
                c.out.scalar_type() == torch::kBFloat16 && c.out.is_contiguous() && c.out.device() == dev,
            "combine_kernels: out must be a contiguous bfloat16 [layers, n, n + extra] tensor on the kernels' device");
}

void check_append(const AppendColumnMeans& a) {
  const auto& r = a.rows;
  QAD_CHECK(r.defined() && r.dim() == 3 && r.scalar_type() == torch::kBFloat16 && a.n >= 1 && r.size(1) > a.n &&
                r.size(2) >= 1 && r.stride(2) == 1 && r.stride(1) == r.size(2),
            "append_column_means: rows must be a bfloat16 [layers, n + extra, features] tensor with extra >= 1 and "
            "rows of contiguous features (n = {})", a.n);
}

// QAD_CKA_GRAM_BLOCKS=N (2 to kMaxGramStrips) asks for N blocks wherever n allows them (blocks of a multiple of 8
// rows): for A/B measurements of the block size; 0 (or unset) is the rule below.
int64_t gram_blocks_from_environment() {
  static const int64_t asked = [] {
    const char* v = std::getenv("QAD_CKA_GRAM_BLOCKS");
    const int64_t nb = v == nullptr ? 0 : std::atoll(v);
    return nb >= 2 && nb <= kMaxGramStrips ? nb : 0;
  }();
  return asked;
}

}  // namespace

int64_t gram_blocks(int64_t n) {
  const int64_t asked = gram_blocks_from_environment();
  if (asked > 0 && n % asked == 0 && (n / asked) % 8 == 0) return asked;
  for (const int64_t nb : {int64_t{4}, int64_t{2}}) {
    if (n % nb == 0 && (n / nb) % 8 == 0 && n / nb >= 256) return nb;
  }
  return 1;
}

GramStrips gram_strips(const torch::Tensor& x) {
  QAD_CHECK(x.defined() && x.dim() == 3 && x.size(1) >= 1, "gram_strips: x must be a [layers, rows, features] tensor");
  const int64_t n = x.size(1), nb = gram_blocks(n), block = n / nb;
  std::vector<torch::Tensor> strips;
  for (int64_t b = 0; b < nb; ++b) {
    strips.push_back(compat::bmm_fp32_out(x.narrow(1, b * block, block),
                                          x.narrow(1, b * block, n - b * block).transpose(1, 2))
                         .contiguous());
  }
  return GramStrips(std::move(strips));
}

std::pair<GramStrips, GramStrips> gram_strips(const torch::Tensor& x, const torch::Tensor& y) {
  QAD_CHECK(x.defined() && y.defined() && x.dim() == 3 && y.dim() == 3 && x.size(0) == y.size(0) &&
                x.size(1) == y.size(1) && x.size(1) >= 1,
            "gram_strips: x and y must be [layers, rows, features] tensors with the same layers and rows");
#ifdef QAD_HAS_CUDA
  const int64_t n = x.size(1), nb = gram_blocks(n), block = n / nb;
  if (nb > 1 && gram_blocks_cuda_supports(x, y, block)) {
    auto k = torch::empty({x.size(0), n, n}, x.options().dtype(torch::kFloat32));
    auto l = torch::empty({x.size(0), n, n}, x.options().dtype(torch::kFloat32));
    gram_blocks_cuda(x, y, block, k, l);
    auto strips = [&](const torch::Tensor& full) {
      std::vector<torch::Tensor> out;
      for (int64_t b = 0; b < nb; ++b) {
        out.push_back(full.narrow(1, b * block, block).narrow(2, b * block, n - b * block));
      }
      return GramStrips(std::move(out));
    };
    return {strips(k), strips(l)};
  }
#endif
  return {gram_strips(x), gram_strips(y)};
}

torch::Tensor full_gram(const GramStrips& g) {
  check_gram(g, "full_gram");
  const auto& s = g.strips;
  const int64_t n = g.n(), block = g.block(), nb = static_cast<int64_t>(s.size());
  auto full = torch::empty({s[0].size(0), n, n}, s[0].options());
  for (int64_t b = 0; b < nb; ++b) {
    const auto& strip = s[static_cast<size_t>(b)];
    full.narrow(1, b * block, block).narrow(2, b * block, n - b * block).copy_(strip);
    // Below the diagonal block: the transposes of the strip's blocks to its right.
    for (int64_t c = b + 1; c < nb; ++c) {
      full.narrow(1, c * block, block).narrow(2, b * block, block).copy_(
          strip.narrow(2, (c - b) * block, block).transpose(1, 2));
    }
  }
  return full;
}

void centre_columns_reference(CentreColumns& a) {
  auto x = a.x.to(torch::kCPU, torch::kFloat32).contiguous();  // exact: every input type widens to float
  const int64_t L = x.size(0), n = x.size(1), p = x.size(2);
  auto centred = torch::empty({L, n, p}, torch::kFloat32), mean = torch::empty({L, 1, p}, torch::kFloat32);
  const float* xs = x.data_ptr<float>();
  float* cs = centred.data_ptr<float>();
  float* ms = mean.data_ptr<float>();
  std::vector<double> sum(static_cast<size_t>(p));
  for (int64_t l = 0; l < L; ++l) {
    const float* xl = xs + l * n * p;
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < p; ++j) sum[static_cast<size_t>(j)] += xl[i * p + j];
    }
    float* ml = ms + l * p;
    for (int64_t j = 0; j < p; ++j) ml[j] = static_cast<float>(sum[static_cast<size_t>(j)] / static_cast<double>(n));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < p; ++j) cs[(l * n + i) * p + j] = xl[i * p + j] - ml[j];
    }
  }
  a.centred.copy_(centred);  // rounds once to bfloat16 where centred is
  a.mean.copy_(mean);
}

void centre_columns(CentreColumns& a) {
  check_centre(a);
#ifdef QAD_HAS_CUDA
  if (a.x.is_cuda()) return centre_columns_cuda(a);
#endif
  centre_columns_reference(a);
}

void pair_sums_reference(PairSums& s) {
  auto a = s.a.to(torch::kCPU).contiguous(), b = s.b.to(torch::kCPU).contiguous();
  const int64_t L = a.size(0), m = a.size(1) * a.size(2);
  auto out = torch::empty({L, 3}, torch::kFloat64);
  const float* as = a.data_ptr<float>();
  const float* bs = b.data_ptr<float>();
  double* os = out.data_ptr<double>();
  for (int64_t l = 0; l < L; ++l) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = l * m; i < (l + 1) * m; ++i) {
      ab += static_cast<float>(as[i] * bs[i]);
      aa += static_cast<float>(as[i] * as[i]);
      bb += static_cast<float>(bs[i] * bs[i]);
    }
    os[l * 3] = ab, os[l * 3 + 1] = aa, os[l * 3 + 2] = bb;
  }
  s.out.copy_(out);
}

void pair_sums(PairSums& s) {
  check_pair_sums(s);
#ifdef QAD_HAS_CUDA
  if (s.a.is_cuda()) return pair_sums_cuda(s);
#endif
  pair_sums_reference(s);
}

void centred_gram_sums_reference(GramSums& g) {
  check_gram_sums(g);
  auto k = full_gram(g.k).to(torch::kCPU).contiguous(), l = full_gram(g.l).to(torch::kCPU).contiguous();
  const int64_t L = k.size(0), n = k.size(1);
  auto sums = torch::empty({L, 3}, torch::kFloat64);
  auto k_rows = torch::empty({L, n}, torch::kFloat32), l_rows = torch::empty({L, n}, torch::kFloat32);
  auto k_mean = torch::empty({L}, torch::kFloat32), l_mean = torch::empty({L}, torch::kFloat32);
  const float* ks = k.data_ptr<float>();
  const float* ls = l.data_ptr<float>();
  auto sum_a = sums.accessor<double, 2>();
  auto k_rows_a = k_rows.accessor<float, 2>(), l_rows_a = l_rows.accessor<float, 2>();
  auto k_mean_a = k_mean.accessor<float, 1>(), l_mean_a = l_mean.accessor<float, 1>();
  std::vector<double> rk(static_cast<size_t>(n)), rl(static_cast<size_t>(n));
  for (int64_t b = 0; b < L; ++b) {
    double kl = 0, kk = 0, ll = 0, sk = 0, sl = 0;
    for (int64_t i = 0; i < n; ++i) {
      double row_k = 0, row_l = 0;
      for (int64_t j = 0; j < n; ++j) {
        const double a = ks[(b * n + i) * n + j], c = ls[(b * n + i) * n + j];
        kl += a * c, kk += a * a, ll += c * c, row_k += a, row_l += c;
      }
      rk[static_cast<size_t>(i)] = row_k, rl[static_cast<size_t>(i)] = row_l;
      sk += row_k, sl += row_l;
    }
    double rkl = 0, rkk = 0, rll = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double a = rk[static_cast<size_t>(i)], c = rl[static_cast<size_t>(i)];
      rkl += a * c, rkk += a * a, rll += c * c;
      k_rows_a[b][i] = static_cast<float>(a / static_cast<double>(n));
      l_rows_a[b][i] = static_cast<float>(c / static_cast<double>(n));
    }
    const double dn = static_cast<double>(n), n2 = dn * dn;
    sum_a[b][0] = kl - 2.0 / dn * rkl + sk * sl / n2;
    sum_a[b][1] = kk - 2.0 / dn * rkk + sk * sk / n2;
    sum_a[b][2] = ll - 2.0 / dn * rll + sl * sl / n2;
    k_mean_a[b] = static_cast<float>(sk / n2);
    l_mean_a[b] = static_cast<float>(sl / n2);
  }
  g.sums.copy_(sums);
  g.k_row_means.copy_(k_rows), g.l_row_means.copy_(l_rows), g.k_mean.copy_(k_mean), g.l_mean.copy_(l_mean);
  if (g.cka.defined()) {
    auto cka = torch::empty({L}, torch::kFloat64);
    for (int64_t b = 0; b < L; ++b) {
      cka.data_ptr<double>()[b] = sum_a[b][0] / std::sqrt(sum_a[b][1] * sum_a[b][2]);
    }
    g.cka.copy_(cka);
    g.cka_float.copy_(cka.to(torch::kFloat32));
  }
}

void centred_gram_sums(GramSums& g) {
  check_gram_sums(g);
#ifdef QAD_HAS_CUDA
  if (g.k.strips[0].is_cuda()) return centred_gram_sums_cuda(g);
#endif
  centred_gram_sums_reference(g);
}

void backward_factors_reference(BackwardFactors& b) {
  auto cpu = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat64).contiguous(); };  // exact
  auto cka = cpu(b.cka), f_own = cpu(b.f_own), fxx = cpu(b.fxx), fyy = cpu(b.fyy), go = cpu(b.go);
  const int64_t L = cka.size(0);
  auto beta = torch::empty({L}, torch::kFloat32), alpha = torch::empty({L}, torch::kFloat32);
  for (int64_t l = 0; l < L; ++l) {
    const double g = go.data_ptr<double>()[l] * b.go_scale;
    beta.data_ptr<float>()[l] = static_cast<float>(-2.0 * cka.data_ptr<double>()[l] / f_own.data_ptr<double>()[l] * g);
    alpha.data_ptr<float>()[l] =
        static_cast<float>(2.0 / std::sqrt(fxx.data_ptr<double>()[l] * fyy.data_ptr<double>()[l]) * g);
  }
  b.beta.copy_(beta);
  b.alpha.copy_(alpha);
}

void backward_factors(BackwardFactors& b) {
  QAD_CHECK(b.cka.defined() && b.cka.dim() == 1, "backward_factors: cka must be a [layers] tensor");
  const int64_t L = b.cka.size(0);
  const auto dev = b.cka.device();
  for (const auto* t : {&b.cka, &b.f_own, &b.fxx, &b.fyy}) {
    QAD_CHECK(t->defined() && t->dim() == 1 && t->size(0) == L && t->scalar_type() == torch::kFloat64 &&
                  t->device() == dev,
              "backward_factors: cka, f_own, fxx and fyy must be float64 [layers] tensors on one device");
  }
  QAD_CHECK(std::isfinite(b.go_scale), "backward_factors: go_scale must be finite, got {}", b.go_scale);
  QAD_CHECK(b.go.defined() && b.go.dim() == 1 && b.go.size(0) == L && b.go.device() == dev &&
                (b.go.scalar_type() == torch::kFloat32 || b.go.scalar_type() == torch::kFloat64),
            "backward_factors: the incoming gradient must be a float32 or float64 [layers] tensor on cka's device");
  QAD_CHECK(is_f32(b.beta, {L}, dev) && is_f32(b.alpha, {L}, dev),
            "backward_factors: beta and alpha must be contiguous float32 [layers] tensors on cka's device");
#ifdef QAD_HAS_CUDA
  if (dev.is_cuda()) return backward_factors_cuda(b);
#endif
  backward_factors_reference(b);
}

namespace {
void check_cka_term(const CkaTerm& t) {
  QAD_CHECK(t.cka.defined() && t.cka.dim() == 1 && t.cka.size(0) >= 1 && t.cka.scalar_type() == torch::kFloat64,
            "cka_term: cka must be a float64 [layers] tensor with at least one layer");
  QAD_CHECK(std::isfinite(t.weight), "cka_term: the weight must be finite, got {}", t.weight);
  const auto dev = t.cka.device();
  QAD_CHECK(t.term.defined() && t.term.dim() == 0 && t.term.scalar_type() == torch::kFloat64 &&
                t.term.device() == dev,
            "cka_term: term must be a 0-dim float64 tensor on cka's device");
  QAD_CHECK(t.loss.defined() && t.loss.dim() == 0 &&
                (t.loss.scalar_type() == torch::kFloat32 || t.loss.scalar_type() == torch::kFloat64) &&
                t.loss.device() == dev,
            "cka_term: loss must be a 0-dim float32 or float64 tensor on cka's device");
}
}  // namespace

void cka_term_reference(CkaTerm& t) {
  check_cka_term(t);
  auto cka = t.cka.to(torch::kCPU).contiguous();
  const int64_t L = cka.size(0);
  double sum = 0;
  for (int64_t l = 0; l < L; ++l) sum += 1.0 - cka.data_ptr<double>()[l];
  const double term = sum / static_cast<double>(L);
  t.term.fill_(term);
  // fill_ with a double rounds it once to the tensor's dtype.
  t.loss.fill_(term * t.weight);
}

void cka_term(CkaTerm& t) {
  check_cka_term(t);
#ifdef QAD_HAS_CUDA
  if (t.cka.is_cuda()) return cka_term_cuda(t);
#endif
  cka_term_reference(t);
}

void combine_kernels_reference(CombineKernels& c) {
  check_combine(c);
  auto cpu = [](const torch::Tensor& t) { return t.to(torch::kCPU).contiguous(); };
  auto own = cpu(full_gram(c.own.gram)), other = cpu(full_gram(c.other.gram));
  auto own_rows = cpu(c.own.row_means), other_rows = cpu(c.other.row_means);
  auto own_mean = cpu(c.own.mean), other_mean = cpu(c.other.mean);
  auto beta = cpu(c.beta), alpha = cpu(c.alpha);
  const int64_t L = own.size(0), n = own.size(1), cols = c.out.size(2);
  auto out = torch::empty(own.sizes(), torch::kFloat32);
  const float* os = own.data_ptr<float>();
  const float* ts = other.data_ptr<float>();
  const float* orow = own_rows.data_ptr<float>();
  const float* trow = other_rows.data_ptr<float>();
  float* rs = out.data_ptr<float>();
  for (int64_t l = 0; l < L; ++l) {
    const float b = beta.data_ptr<float>()[l], a = alpha.data_ptr<float>()[l];
    const float om = own_mean.data_ptr<float>()[l], tm = other_mean.data_ptr<float>()[l];
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t at = (l * n + i) * n + j;
        // volatile: every operation rounded to float on its own (no contraction into a fused multiply-add)
        volatile float kc = os[at] - orow[l * n + i];
        kc = kc - orow[l * n + j];
        kc = kc + om;
        volatile float lc = ts[at] - trow[l * n + i];
        lc = lc - trow[l * n + j];
        lc = lc + tm;
        volatile float p = kc * b;
        volatile float q = lc * a;
        rs[at] = p + q;
      }
    }
  }
  auto rounded = out.to(torch::kBFloat16);  // to nearest even
  if (cols == n) {
    c.out.copy_(rounded);
    return;
  }
  // The rank-1 correction column: minus each rounded row's sum (in double, plain order), then zeros.
  auto full = torch::zeros({L, n, cols}, torch::kBFloat16);
  full.narrow(2, 0, n).copy_(rounded);
  auto widened = rounded.to(torch::kFloat64);
  const double* ws = widened.data_ptr<double>();
  auto* fs = full.data_ptr<at::BFloat16>();
  for (int64_t r = 0; r < L * n; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += ws[r * n + j];
    fs[r * cols + n] = at::BFloat16(static_cast<float>(-sum));
  }
  c.out.copy_(full);
}

void combine_kernels(CombineKernels& c) {
  check_combine(c);
#ifdef QAD_HAS_CUDA
  if (c.own.gram.strips[0].is_cuda()) return combine_kernels_cuda(c);
#endif
  combine_kernels_reference(c);
}

void append_column_means_reference(AppendColumnMeans& a) {
  const int64_t L = a.rows.size(0), e = a.rows.size(1) - a.n, p = a.rows.size(2);
  auto data = a.rows.narrow(1, 0, a.n).to(torch::kCPU, torch::kFloat64).contiguous();  // exact
  const double* ds = data.data_ptr<double>();
  auto tail = torch::zeros({L, e, p}, torch::kFloat32);
  float* ts = tail.data_ptr<float>();
  std::vector<double> sum(static_cast<size_t>(p));
  for (int64_t l = 0; l < L; ++l) {
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t i = 0; i < a.n; ++i) {
      for (int64_t j = 0; j < p; ++j) sum[static_cast<size_t>(j)] += ds[(l * a.n + i) * p + j];
    }
    for (int64_t j = 0; j < p; ++j) {
      ts[l * e * p + j] = static_cast<float>(sum[static_cast<size_t>(j)] / static_cast<double>(a.n));
    }
  }
  a.rows.narrow(1, a.n, e).copy_(tail);  // rounds the means to bfloat16, to nearest even
}

void append_column_means(AppendColumnMeans& a) {
  check_append(a);
#ifdef QAD_HAS_CUDA
  if (a.rows.is_cuda()) return append_column_means_cuda(a);
#endif
  append_column_means_reference(a);
}

}  // namespace qad::loss::kernels
