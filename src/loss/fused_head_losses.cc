// Chunked lm_head + KL / CE as one autograd Function (see fused_head_losses.h).
#include "loss/fused_head_losses.h"

#include <limits>

#include "loss/softmax_rows.h"
#include "loss/token_rows.h"
#include "util/error.h"

namespace qad::loss {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Inputs {
  torch::Tensor teacher_hidden, teacher_head, labels, keep;  // keep: [N] float weights (1 = counts) or undefined
  HeadLossOptions options;
  bool want_grad = false;
};

// Side results of the forward (the Function returns only the differentiable loss).
struct Values {
  torch::Tensor kl, ce;
};

torch::Tensor finite_log_softmax(const torch::Tensor& z) {
  auto l = torch::log_softmax(z, 1);
  const double lowest = z.scalar_type() == torch::kFloat64 ? std::numeric_limits<double>::lowest()
                                                           : std::numeric_limits<float>::lowest();
  return l.clamp_min_(lowest);
}

struct FusedHeadLoss : public torch::autograd::Function<FusedHeadLoss> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden, const torch::Tensor& head,
                               const Inputs& in, Values* out) {
    const auto& o = in.options;
    const int64_t h = hidden.size(-1);
    auto hs = hidden.reshape({-1, h});
    const int64_t n = hs.size(0);
    const auto ct = hidden.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    const auto dev_ct = torch::TensorOptions().dtype(ct).device(hidden.device());
    const bool want_kl = o.kl_weight > 0;
    const bool want_ce = o.ce_weight > 0 || o.ce_value;
    const double T = o.temperature;

    // Token weights and counts, on the device. KL counts `keep`; CE also drops ignored labels.
    auto keep = in.keep.defined() ? in.keep.to(dev_ct) : torch::ones({n}, dev_ct);
    auto inv_kl = 1.0 / keep.sum().clamp_min(1.0);
    torch::Tensor keep_ce, labels, inv_ce;
    if (want_ce) {
      auto lab = in.labels.reshape({-1}).to(hidden.device());
      auto valid = (lab != o.ignore_index).to(ct);
      keep_ce = keep * valid;
      inv_ce = 1.0 / keep_ce.sum().clamp_min(1.0);
      labels = lab.masked_fill(lab == o.ignore_index, 0).reshape({-1, 1});
    }
    auto ht = want_kl ? in.teacher_hidden.reshape({-1, in.teacher_hidden.size(-1)}) : torch::Tensor();

    const bool want_grad = in.want_grad;
    torch::Tensor grad_h, grad_w;
    if (want_grad) {
      grad_h = torch::empty_like(hs);
      grad_w = torch::zeros(head.sizes(), head.options().dtype(ct));
    }
    auto kl_total = torch::zeros({}, dev_ct), ce_total = torch::zeros({}, dev_ct);
    const bool per_row = ct == torch::kFloat32 && (!want_ce || T == 1.0) &&
                         (o.softmax_rows == SoftmaxRowsUse::kAlways ||
                          (o.softmax_rows == SoftmaxRowsUse::kAuto && hidden.is_cuda()));
    // d loss / d logits of rows [b, b + len) (model dtype) into the hidden-state and lm_head weight gradients.
    auto add_logit_grad = [&](const torch::Tensor& g_model, int64_t b, int64_t len, const torch::Tensor& hs_c) {
      auto rows = grad_h.narrow(0, b, len);
      torch::mm_out(rows, g_model, head);
      grad_w.add_(torch::mm(g_model.t(), hs_c));
    };
    for (int64_t b = 0; b < n; b += o.chunk_tokens) {
      const int64_t len = std::min(o.chunk_tokens, n - b);
      auto hs_c = hs.narrow(0, b, len);
      if (per_row) {
        // Logits in the model's dtype; the kernel reads them twice and writes d loss / d logits in that dtype.
        kernels::SoftmaxRows a;
        a.student = torch::mm(hs_c, head.t());
        a.temperature = T;
        auto w_r = keep.narrow(0, b, len);
        const auto f32 = w_r.options();
        if (want_kl) {
          a.teacher = torch::mm(ht.narrow(0, b, len), in.teacher_head.t());
          a.kl = torch::empty({len}, f32);
          if (want_grad) a.kl_coef = w_r * (inv_kl * (o.kl_weight * T));  // d(T^2 KL)/ds = T (ps - pt) / n
        }
        torch::Tensor kc;
        if (want_ce) {
          kc = keep_ce.narrow(0, b, len);
          a.labels = labels.narrow(0, b, len).reshape({-1}).contiguous();
          a.ce = torch::empty({len}, f32);
          if (want_grad && o.ce_weight > 0) a.ce_coef = kc * (inv_ce * o.ce_weight);  // d CE/ds = (p - onehot) / n
        }
        if (want_grad) a.grad = torch::empty_like(a.student);
        kernels::softmax_rows(a);
        a.student = a.teacher = torch::Tensor();
        if (want_kl) kl_total += torch::dot(a.kl, w_r);
        if (want_ce) ce_total += torch::dot(a.ce, kc);
        if (want_grad) add_logit_grad(a.grad, b, len, hs_c);
        continue;
      }
      auto w_c = keep.narrow(0, b, len).unsqueeze(1);
      // d loss / d logits, built up in place
      torch::Tensor g;
      auto s = torch::mm(hs_c, head.t()).to(ct);
      if (want_kl) {
        auto t = torch::mm(ht.narrow(0, b, len), in.teacher_head.t()).to(ct);
        if (T != 1.0) {
          s.div_(T);
          t.div_(T);
        }
        auto log_ps = finite_log_softmax(s);
        s = torch::Tensor();  // tempered in place: CE recomputes it (or, at T = 1, reads log_ps)
        auto log_pt = finite_log_softmax(t);
        t = torch::Tensor();
        auto pt = log_pt.exp();
        // sum over tokens of w * sum_v pt (log pt - log ps): the weighted difference in place, then one dot product
        kl_total += torch::dot(pt.reshape({-1}), log_pt.sub_(log_ps).mul_(w_c).reshape({-1}));
        log_pt = torch::Tensor();
        if (want_grad) {
          // d(T^2 KL)/ds = T * (ps - pt) / n
          g = log_ps.exp().sub_(pt).mul_(w_c).mul_(inv_kl * (o.kl_weight * T));
        }
        if (want_ce && T == 1.0) s = log_ps;  // log softmax at T = 1 is CE's as well
      }
      if (want_ce) {
        torch::Tensor log_p;
        if (s.defined() && want_kl) {
          log_p = s;
        } else {
          log_p = finite_log_softmax(s.defined() ? s : torch::mm(hs_c, head.t()).to(ct));
        }
        auto kc = keep_ce.narrow(0, b, len);
        auto lab = labels.narrow(0, b, len);
        ce_total -= (log_p.gather(1, lab).squeeze(1) * kc).sum();
        if (want_grad && o.ce_weight > 0) {
          // d CE / d s = (p - onehot(label)) / n_ce
          auto gc = log_p.exp();
          gc.scatter_add_(1, lab, torch::full({len, 1}, -1.0, gc.options()));
          gc.mul_(kc.unsqueeze(1)).mul_(inv_ce * o.ce_weight);
          g = g.defined() ? g.add_(gc) : gc;
        }
      }
      s = torch::Tensor();
      if (want_grad) {
        if (!g.defined()) g = torch::zeros({len, head.size(0)}, dev_ct);
        auto g_model = g.to(hidden.scalar_type());
        g = torch::Tensor();
        add_logit_grad(g_model, b, len, hs_c);
      }
    }
    if (want_kl) out->kl = (kl_total * inv_kl * (T * T)).detach();
    if (want_ce) out->ce = (ce_total * inv_ce).detach();
    auto loss = torch::zeros({}, dev_ct);
    if (want_kl) loss = loss + o.kl_weight * out->kl;
    if (o.ce_weight > 0) loss = loss + o.ce_weight * out->ce;
    if (want_grad) {
      ctx->saved_data["grad_h"] = grad_h.view(hidden.sizes());
      ctx->saved_data["grad_w"] = grad_w.to(head.scalar_type());
    }
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto gh = ctx->saved_data["grad_h"].toTensor();
    auto gw = ctx->saved_data["grad_w"].toTensor();
    const auto& go = grad_outputs[0];
    return {gh * go.to(gh.scalar_type()), gw * go.to(gw.scalar_type()), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

HeadLosses fused_head_losses(const torch::Tensor& student_hidden, const torch::Tensor& student_head,
                             const torch::Tensor& teacher_hidden, const torch::Tensor& teacher_head,
                             const torch::Tensor& labels, const torch::Tensor& mask, const HeadLossOptions& options) {
  const auto& o = options;
  QAD_CHECK(student_hidden.defined() && student_head.defined() && student_head.dim() == 2 &&
                student_hidden.size(-1) == student_head.size(1),
            "fused_head_losses: student hidden [..., H] and head [V, H] do not fit");
  QAD_CHECK(o.kl_weight >= 0 && o.ce_weight >= 0 && o.temperature > 0 && o.chunk_tokens > 0,
            "fused_head_losses: weights must be >= 0, temperature and chunk_tokens > 0");
  const bool want_kl = o.kl_weight > 0;
  const bool want_ce = o.ce_weight > 0 || o.ce_value;
  auto leading = student_hidden.sizes().slice(0, student_hidden.dim() - 1);
  if (want_kl) {
    QAD_CHECK(teacher_hidden.defined() && teacher_head.defined() && teacher_head.dim() == 2 &&
                  teacher_hidden.size(-1) == teacher_head.size(1) &&
                  teacher_hidden.sizes().slice(0, teacher_hidden.dim() - 1) == leading &&
                  teacher_head.size(0) == student_head.size(0),
              "fused_head_losses: the teacher's hidden states / head do not match the student's tokens and vocabulary "
              "(student hidden {}, head {})", detail::shape_str(student_hidden.sizes()),
              detail::shape_str(student_head.sizes()));
  }
  if (want_ce) {
    QAD_CHECK(labels.defined() && labels.sizes() == leading && labels.scalar_type() == torch::kInt64,
              "fused_head_losses: labels must be int64 of the token shape {}", detail::shape_str(leading));
  }
  Inputs in;
  in.options = o;
  if (want_kl) {
    in.teacher_hidden = teacher_hidden.detach();
    in.teacher_head = teacher_head.detach();
  }
  in.labels = labels;
  in.want_grad = torch::GradMode::is_enabled() && (student_hidden.requires_grad() || student_head.requires_grad());
  auto keep = detail::mask_to_keep(mask, leading, "fused_head_losses");
  if (keep.defined()) in.keep = keep.to(student_hidden.device());
  Values v;
  HeadLosses out;
  out.loss = FusedHeadLoss::apply(student_hidden, student_head, in, &v);
  out.kl = v.kl;
  out.ce = v.ce;
  return out;
}

}  // namespace qad::loss
