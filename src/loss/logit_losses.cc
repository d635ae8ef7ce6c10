// Chunked KL and cross-entropy as custom autograd Functions: the forward walks the valid tokens in chunks,
// computes each chunk's loss and its gradient in FP32, and keeps only the gradient (in the logits' dtype).
#include "loss/logit_losses.h"

#include <limits>

#include "loss/token_rows.h"
#include "util/error.h"

namespace qad::loss {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

torch::ScalarType compute_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// log-probabilities with -inf replaced by the lowest finite value, so that 0 * log 0 terms give 0 (not NaN)
// in the dot products below; a -inf student log-probability under a positive teacher probability still
// makes the KL huge, as it should.
torch::Tensor finite_log_softmax(const torch::Tensor& z) {
  auto l = torch::log_softmax(z, 1);
  const double lowest = z.scalar_type() == torch::kFloat64 ? std::numeric_limits<double>::lowest()
                                                           : std::numeric_limits<float>::lowest();
  return l.clamp_min_(lowest);
}

struct KLConfig {
  double temperature;
  int64_t top_k;
  int64_t chunk;
  bool want_grad;
  bool tail = false;  // top-k with the tail category (chunk_kl_tail)
};

// One chunk of the KL: s, t [len, n] student / teacher logits (copies in the compute type, consumed). Returns
// sum_tokens sum_v pt (log pt - log ps) in FP64 (0-dim); with grad_scale != 0, s holds the gradient
// grad_scale * (ps - pt) afterwards (d(T^2 KL)/ds = T^2 * (ps - pt) / T; grad_scale = T / n_tokens).
torch::Tensor chunk_kl(torch::Tensor& s, torch::Tensor& t, double T, double grad_scale) {
  if (T != 1.0) {
    s.div_(T);
    t.div_(T);
  }
  auto log_ps = finite_log_softmax(s);
  s = torch::Tensor();
  auto log_pt = finite_log_softmax(t);
  t = torch::Tensor();
  auto pt = log_pt.exp();
  // The difference in place, then one dot product (no further [len, V] temporary, and no cancellation between
  // two entropy-sized sums when KL is tiny).
  auto sum = torch::dot(pt.reshape({-1}), log_pt.sub_(log_ps).reshape({-1})).to(torch::kFloat64);
  log_pt = torch::Tensor();
  s = grad_scale != 0 ? log_ps.exp_().sub_(pt).mul_(grad_scale) : torch::Tensor();
  return sum;
}

// One chunk of the top-k KL with a tail category: s [len, V] the student's logits (a copy in the compute type,
// consumed), t [len, k] the teacher's logits on S (a copy, consumed), lse [len, 1] logsumexp(t/T) over the teacher's
// full vocabulary, top [len, k] the ids of S. Returns the chunk's sum of
//   sum_S p (log p - log q) + p_tail (log p_tail - log q_tail)
// in FP64 (0-dim); with grad_scale != 0, s holds grad_scale * (q - p on S - p_tail q / q_tail outside S) afterwards
// (d(T^2 KL)/ds = T (...) / n; grad_scale = T / n_tokens). Derivation, with z = s/T and c over S and the tail:
// d log q_v/dz_u = [u = v] - q_u, d log q_tail/dz_u = [u not in S] q_u / q_tail - q_u, and sum_c p_c = 1.
torch::Tensor chunk_kl_tail(torch::Tensor& s, torch::Tensor& t, const torch::Tensor& lse, const torch::Tensor& top,
                            double T, double grad_scale) {
  const bool f64 = s.scalar_type() == torch::kFloat64;
  const double lowest = f64 ? std::numeric_limits<double>::lowest() : std::numeric_limits<float>::lowest();
  const double inf = std::numeric_limits<double>::infinity();
  if (T != 1.0) {
    s.div_(T);
    t.div_(T);
  }
  const bool no_tail = top.size(1) == s.size(1);  // S is the whole vocabulary
  auto log_q = finite_log_softmax(s);  // the student over the full vocabulary
  s = torch::Tensor();
  // log q_tail = logsumexp of the student's log-probabilities outside S: accurate however small the tail is (1 -
  // sum_S q would be rounding noise below ~1e-7 in FP32). An empty tail gives -inf, clamped to stay finite.
  auto tail = log_q.scatter(1, top, -inf);
  auto log_q_tail = torch::logsumexp(tail, 1, /*keepdim=*/true).clamp_min_(lowest);
  // The teacher's true probabilities on S and the mass it puts outside (no renormalisation).
  auto log_p = t.sub_(lse).clamp_min_(lowest);  // -inf logits (a masked entry) would give 0 * -inf below
  t = torch::Tensor();
  auto p = log_p.exp();
  auto p_tail = (1 - p.sum(1, /*keepdim=*/true)).clamp_min_(0);
  if (no_tail) p_tail.zero_();  // what 1 - sum_S p holds then is rounding, not mass
  auto sum = torch::dot(p.reshape({-1}), (log_p - log_q.gather(1, top)).reshape({-1})).to(torch::kFloat64);
  auto tail_terms = torch::where(p_tail > 0, p_tail * (p_tail.log() - log_q_tail), torch::zeros_like(p_tail));
  sum += tail_terms.sum().to(torch::kFloat64);
  if (grad_scale == 0) return sum;
  // Outside S: q_u - p_tail q_u / q_tail, with q_u / q_tail = exp(log q_u - log q_tail) (no overflow when q_tail is
  // tiny; 0 on S, where `tail` is -inf). On S: q_u - p_u.
  auto within_tail = tail.sub_(log_q_tail).exp_();
  s = log_q.exp_().sub_(within_tail.mul_(p_tail));
  s.scatter_add_(1, top, p.neg_());
  s.mul_(grad_scale);
  return sum;
}

// KL over the full vocabulary, chunk by chunk.
struct ChunkedKL : public torch::autograd::Function<ChunkedKL> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& student, const torch::Tensor& teacher,
                               const detail::TokenRows& rows, const KLConfig& cfg) {
    const int64_t vocab = student.size(-1);
    auto s2 = student.reshape({-1, vocab});
    auto t2 = teacher.reshape({-1, vocab});
    const auto ct = compute_type(student);
    const double T = cfg.temperature;
    const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(rows.count, 1));
    auto total = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(student.device()));
    torch::Tensor grad;
    if (cfg.want_grad) grad = torch::zeros_like(s2);
    for (int64_t b = 0; b < rows.count; b += cfg.chunk) {
      const int64_t len = std::min(cfg.chunk, rows.count - b);
      // always copies (FP32 / FP64 inputs included): the chunk is modified in place below
      auto s = rows.take(s2, b, len).to(ct, /*non_blocking=*/false, /*copy=*/true);
      auto t = rows.take(t2, b, len).to(ct, /*non_blocking=*/false, /*copy=*/true);
      total += chunk_kl(s, t, T, cfg.want_grad ? T * inv_n : 0.0);
      if (cfg.want_grad) rows.put(grad, b, len, s.to(grad.scalar_type()));
    }
    if (cfg.want_grad) ctx->saved_data["grad"] = grad.view(student.sizes());
    return (total * (T * T * inv_n)).to(ct);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // grad_output is rounded to the logits' dtype (BF16: a loss weight like 0.3 becomes 0.30078): a constant
    // rescale, cheaper than an FP32 pass over [tokens, vocab].
    auto grad = ctx->saved_data["grad"].toTensor();
    return {grad * grad_outputs[0].to(grad.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// KL over the teacher's top-k support S (ids given per token): the student's logits are gathered at S, the
// teacher's come as [tokens, k] already.
// With cfg.tail, the KL over S and the tail category (chunk_kl_tail), the teacher's lse [...] given.
struct ChunkedTopKL : public torch::autograd::Function<ChunkedTopKL> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& student, const torch::Tensor& top_logits,
                               const torch::Tensor& top_ids, const c10::optional<torch::Tensor>& lse,
                               const detail::TokenRows& rows, const KLConfig& cfg) {
    const int64_t vocab = student.size(-1), k = top_logits.size(-1);
    auto s2 = student.reshape({-1, vocab});
    auto t2 = top_logits.reshape({-1, k});
    auto i2 = top_ids.reshape({-1, k});
    torch::Tensor l2;
    if (cfg.tail) l2 = lse.value().reshape({-1, 1});
    const auto ct = compute_type(student);
    const double T = cfg.temperature;
    const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(rows.count, 1));
    auto total = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(student.device()));
    torch::Tensor grad;
    if (cfg.want_grad) grad = torch::zeros_like(s2);
    for (int64_t b = 0; b < rows.count; b += cfg.chunk) {
      const int64_t len = std::min(cfg.chunk, rows.count - b);
      auto top = rows.take(i2, b, len);
      auto t = rows.take(t2, b, len).to(ct, /*non_blocking=*/false, /*copy=*/true);
      if (cfg.tail) {  // the student's full rows: the tail needs them all, and the gradient is dense
        auto s = rows.take(s2, b, len).to(ct, /*non_blocking=*/false, /*copy=*/true);
        total += chunk_kl_tail(s, t, rows.take(l2, b, len).to(ct), top, T, cfg.want_grad ? T * inv_n : 0.0);
        if (cfg.want_grad) rows.put(grad, b, len, s.to(grad.scalar_type()));
        continue;
      }
      auto s = rows.take(s2, b, len).gather(1, top).to(ct, /*non_blocking=*/false, /*copy=*/true);
      total += chunk_kl(s, t, T, cfg.want_grad ? T * inv_n : 0.0);
      if (cfg.want_grad) {
        auto full = torch::zeros({len, vocab}, s.options());
        full.scatter_(1, top, s);
        rows.put(grad, b, len, full.to(grad.scalar_type()));
      }
    }
    if (cfg.want_grad) ctx->saved_data["grad"] = grad.view(student.sizes());
    return (total * (T * T * inv_n)).to(ct);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto grad = ctx->saved_data["grad"].toTensor();
    return {grad * grad_outputs[0].to(grad.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

struct ChunkedCE : public torch::autograd::Function<ChunkedCE> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& labels,
                               const detail::TokenRows& rows, int64_t chunk, bool want_grad) {
    const int64_t vocab = logits.size(-1);
    auto s2 = logits.reshape({-1, vocab});
    auto l1 = labels.reshape({-1, 1});
    const auto ct = compute_type(logits);
    const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(rows.count, 1));
    auto total = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(logits.device()));
    torch::Tensor grad;
    if (want_grad) grad = torch::zeros_like(s2);
    for (int64_t b = 0; b < rows.count; b += chunk) {
      const int64_t len = std::min(chunk, rows.count - b);
      auto log_p = torch::log_softmax(rows.take(s2, b, len).to(ct), 1);
      auto lbl = rows.take(l1, b, len);
      total -= log_p.gather(1, lbl).sum().to(torch::kFloat64);
      if (want_grad) {
        auto g = log_p.exp_();
        g.scatter_add_(1, lbl, torch::full({len, 1}, -1.0, g.options()));
        rows.put(grad, b, len, g.mul_(inv_n).to(grad.scalar_type()));
      }
    }
    if (want_grad) ctx->saved_data["grad"] = grad.view(logits.sizes());
    return (total * inv_n).to(ct);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto grad = ctx->saved_data["grad"].toTensor();
    return {grad * grad_outputs[0].to(grad.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

void check_logits(const torch::Tensor& logits, const char* what) {
  QAD_CHECK(logits.defined(), "{}: logits tensor is undefined", what);
  QAD_CHECK(logits.dim() >= 2, "{}: logits must be [..., vocab] with at least 2 dimensions, got {}", what,
            detail::shape_str(logits.sizes()));
  QAD_CHECK(logits.is_floating_point(), "{}: logits must be a floating-point tensor, got {}", what,
            c10::toString(logits.scalar_type()));
  QAD_CHECK(logits.size(-1) > 0, "{}: logits have an empty vocabulary dimension", what);
}

}  // namespace

torch::Tensor kl_divergence(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                            const torch::Tensor& mask, const KLOptions& options) {
  check_logits(student_logits, "kl_divergence (student)");
  check_logits(teacher_logits, "kl_divergence (teacher)");
  QAD_CHECK(student_logits.sizes() == teacher_logits.sizes(),
            "kl_divergence: student logits {} and teacher logits {} differ in shape; both models must see the "
            "same tokens and share the vocabulary",
            detail::shape_str(student_logits.sizes()), detail::shape_str(teacher_logits.sizes()));
  QAD_CHECK(student_logits.device() == teacher_logits.device(),
            "kl_divergence: student and teacher logits are on different devices");
  QAD_CHECK(options.temperature > 0, "kl_divergence: temperature must be > 0, got {}", options.temperature);
  QAD_CHECK(options.chunk_tokens > 0, "kl_divergence: chunk_tokens must be > 0, got {}", options.chunk_tokens);
  QAD_CHECK(options.top_k >= 0, "kl_divergence: top_k must be >= 0 (0 = full vocabulary), got {}", options.top_k);
  const int64_t vocab = student_logits.size(-1);
  if (options.top_k > 0 && options.top_k < vocab) {  // one top-k path, live or from a teacher cache
    auto [top_logits, top_ids] = teacher_top_k(teacher_logits.detach(), options.top_k);
    torch::Tensor lse;
    if (options.top_k_tail) lse = teacher_logsumexp(teacher_logits.detach(), options.temperature);
    return kl_divergence_top_k(student_logits, top_logits, top_ids, mask, options, lse);
  }
  auto leading = student_logits.sizes().slice(0, student_logits.dim() - 1);
  auto keep = detail::mask_to_keep(mask, leading, "kl_divergence");
  if (keep.defined()) keep = keep.to(student_logits.device());
  auto rows = detail::select_rows(keep, student_logits.numel() / vocab);
  KLConfig cfg{options.temperature, 0, options.chunk_tokens,
               torch::GradMode::is_enabled() && student_logits.requires_grad()};
  return ChunkedKL::apply(student_logits, teacher_logits.detach(), rows, cfg);
}

std::pair<torch::Tensor, torch::Tensor> teacher_top_k(const torch::Tensor& teacher_logits, int64_t k) {
  check_logits(teacher_logits, "teacher_top_k");
  QAD_CHECK(k > 0, "teacher_top_k: k must be > 0, got {}", k);
  auto [values, ids] = teacher_logits.detach().topk(std::min(k, teacher_logits.size(-1)), -1, /*largest=*/true,
                                                    /*sorted=*/true);
  return {values, ids};
}

torch::Tensor teacher_logsumexp(const torch::Tensor& teacher_logits, double temperature) {
  check_logits(teacher_logits, "teacher_logsumexp");
  QAD_CHECK(temperature > 0, "teacher_logsumexp: temperature must be > 0, got {}", temperature);
  // Fixed row chunks (not loss.chunk_tokens): the cache builder and the live step then reduce the same shapes, so a
  // reduction whose order depends on the shape (CUDA) gives the same bits in both. Transient: one FP32 chunk.
  constexpr int64_t kRows = 2048;
  const int64_t vocab = teacher_logits.size(-1);
  auto t2 = teacher_logits.detach().reshape({-1, vocab});
  const auto ct = compute_type(teacher_logits);
  auto out = torch::empty({t2.size(0)}, t2.options().dtype(ct));
  for (int64_t b = 0; b < t2.size(0); b += kRows) {
    const int64_t len = std::min(kRows, t2.size(0) - b);
    auto chunk = t2.narrow(0, b, len).to(ct, /*non_blocking=*/false, /*copy=*/true);
    if (temperature != 1.0) chunk.div_(temperature);
    out.narrow(0, b, len).copy_(torch::logsumexp(chunk, 1));
  }
  return out.view(teacher_logits.sizes().slice(0, teacher_logits.dim() - 1));
}

torch::Tensor kl_divergence_top_k(const torch::Tensor& student_logits, const torch::Tensor& teacher_top_logits,
                                  const torch::Tensor& teacher_top_ids, const torch::Tensor& mask,
                                  const KLOptions& options, const torch::Tensor& teacher_lse) {
  check_logits(student_logits, "kl_divergence_top_k (student)");
  check_logits(teacher_top_logits, "kl_divergence_top_k (teacher)");
  const auto leading = student_logits.sizes().slice(0, student_logits.dim() - 1);
  const int64_t vocab = student_logits.size(-1);
  QAD_CHECK(teacher_top_logits.dim() == student_logits.dim() &&
                teacher_top_logits.sizes().slice(0, teacher_top_logits.dim() - 1) == leading &&
                teacher_top_logits.size(-1) <= vocab,
            "kl_divergence_top_k: teacher top-k logits {} do not match the student logits {} (same tokens, k <= "
            "vocabulary)", detail::shape_str(teacher_top_logits.sizes()), detail::shape_str(student_logits.sizes()));
  QAD_CHECK(teacher_top_ids.defined() && teacher_top_ids.sizes() == teacher_top_logits.sizes() &&
                teacher_top_ids.scalar_type() == torch::kInt64,
            "kl_divergence_top_k: teacher top-k ids must be int64 of the logits' shape {}, got {}",
            detail::shape_str(teacher_top_logits.sizes()),
            teacher_top_ids.defined() ? detail::shape_str(teacher_top_ids.sizes()) : std::string("(undefined)"));
  QAD_CHECK(student_logits.device() == teacher_top_logits.device() &&
                student_logits.device() == teacher_top_ids.device(),
            "kl_divergence_top_k: student logits and the teacher's top-k are on different devices");
  QAD_CHECK(options.temperature > 0, "kl_divergence_top_k: temperature must be > 0, got {}", options.temperature);
  QAD_CHECK(options.chunk_tokens > 0, "kl_divergence_top_k: chunk_tokens must be > 0, got {}", options.chunk_tokens);
  if (options.top_k_tail) {
    QAD_CHECK(teacher_lse.defined() && teacher_lse.is_floating_point() && teacher_lse.sizes() == leading &&
                  teacher_lse.device() == student_logits.device(),
              "kl_divergence_top_k: the tail KL (top_k_tail) needs the teacher's logsumexp over the full vocabulary "
              "per token, a float tensor {} on the student's device; got {}", detail::shape_str(leading),
              teacher_lse.defined() ? detail::shape_str(teacher_lse.sizes()) : std::string("(undefined)"));
  }
  auto keep = detail::mask_to_keep(mask, leading, "kl_divergence_top_k");
  if (keep.defined()) keep = keep.to(student_logits.device());
  auto rows = detail::select_rows(keep, student_logits.numel() / vocab);
  KLConfig cfg{options.temperature, teacher_top_logits.size(-1), options.chunk_tokens,
               torch::GradMode::is_enabled() && student_logits.requires_grad(), options.top_k_tail};
  // (an optional: autograd's apply refuses an undefined tensor argument)
  c10::optional<torch::Tensor> lse;
  if (options.top_k_tail) lse = teacher_lse.detach();
  return ChunkedTopKL::apply(student_logits, teacher_top_logits.detach(), teacher_top_ids, lse, rows, cfg);
}

torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& mask,
                            int64_t chunk_tokens, int64_t ignore_index, bool check_labels) {
  check_logits(logits, "cross_entropy");
  auto leading = logits.sizes().slice(0, logits.dim() - 1);
  QAD_CHECK(labels.defined() && labels.sizes() == leading,
            "cross_entropy: labels have shape {} but the logits' token dimensions are {}",
            labels.defined() ? detail::shape_str(labels.sizes()) : std::string("(undefined)"),
            detail::shape_str(leading));
  QAD_CHECK(labels.scalar_type() == torch::kInt64, "cross_entropy: labels must be int64, got {}",
            c10::toString(labels.scalar_type()));
  QAD_CHECK(chunk_tokens > 0, "cross_entropy: chunk_tokens must be > 0, got {}", chunk_tokens);
  auto labels_dev = labels.to(logits.device());
  auto keep = labels_dev.reshape({-1}) != ignore_index;
  auto mask_keep = detail::mask_to_keep(mask, leading, "cross_entropy");
  if (mask_keep.defined()) keep = keep.logical_and(mask_keep.to(keep.device()));
  auto rows = detail::select_rows(keep, labels.numel());
  const int64_t vocab = logits.size(-1);
  if (rows.count > 0 && check_labels) {
    // gather with an out-of-range index would read out of bounds (or trap on the GPU): check first.
    auto used = rows.index.defined() ? labels_dev.reshape({-1}).index_select(0, rows.index) : labels_dev.reshape({-1});
    auto bad = (used < 0).logical_or(used >= vocab);
    if (bad.any().item<bool>()) {
      const int64_t i = bad.nonzero()[0][0].item<int64_t>();
      const int64_t flat = rows.index.defined() ? rows.index[i].item<int64_t>() : i;
      fail("cross_entropy: label {} at token {} (flattened) is outside the vocabulary [0, {}); use {} to ignore "
           "a token",
           used[i].item<int64_t>(), flat, vocab, ignore_index);
    }
  }
  const bool want_grad = torch::GradMode::is_enabled() && logits.requires_grad();
  return ChunkedCE::apply(logits, labels_dev, rows, chunk_tokens, want_grad);
}

}  // namespace qad::loss
