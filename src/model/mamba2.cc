// Mamba-2 mixer and the SSD scan in LibTorch ops (see mamba2.h); checked against transformers 5.17's
// NemotronHMamba2Mixer torch path (tests/model/nemotron_h_test.cc) and the sequential recurrence.
#include "model/mamba2.h"

#include <limits>

#include "util/error.h"
#include "util/torch_format.h"

namespace qad::model {
namespace {

void check_scan_args(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& a, const torch::Tensor& b,
                     const torch::Tensor& c, const torch::Tensor& s0) {
  QAD_CHECK(x.dim() == 4, "ssd scan: x must be [B, T, H, P], got {}", shape_str(x.sizes()));
  const auto bs = x.size(0), t = x.size(1), h = x.size(2), p = x.size(3);
  QAD_CHECK(dt.sizes() == torch::IntArrayRef({bs, t, h}), "ssd scan: dt must be [{}, {}, {}], got {}", bs, t, h,
            shape_str(dt.sizes()));
  QAD_CHECK(a.dim() == 1 && a.size(0) == h, "ssd scan: A must be [{}], got {}", h, shape_str(a.sizes()));
  QAD_CHECK(b.dim() == 4 && b.sizes() == c.sizes() && b.size(0) == bs && b.size(1) == t && b.size(2) == h,
            "ssd scan: B and C must be [{}, {}, {}, N], got {} and {}", bs, t, h, shape_str(b.sizes()),
            shape_str(c.sizes()));
  if (s0.defined()) {
    QAD_CHECK(s0.sizes() == torch::IntArrayRef({bs, h, p, b.size(3)}), "ssd scan: initial state must be [{}, {}, {}, "
              "{}], got {}", bs, h, p, b.size(3), shape_str(s0.sizes()));
  }
}

// transformers' segment_sum: seg[..., i, j] = a[j+1] + ... + a[i] for i >= j (a cumulative sum of masked copies,
// not a difference of cumsums, so that no large partial sums cancel), -inf above the diagonal.
torch::Tensor segment_sum(const torch::Tensor& a) {
  const int64_t l = a.size(-1);
  auto opts = a.options().dtype(torch::kBool);
  std::vector<int64_t> shape = a.sizes().vec();
  shape.push_back(l);
  auto e = a.unsqueeze(-1).expand(shape);  // e[..., i, j] = a[i]
  auto strict_lower = torch::ones({l, l}, opts).tril(-1);
  auto seg = e.masked_fill(strict_lower.logical_not(), 0).cumsum(-2);
  auto lower = torch::ones({l, l}, opts).tril(0);
  return seg.masked_fill(lower.logical_not(), -std::numeric_limits<float>::infinity());
}

}  // namespace

SsdScanOutput ssd_scan_chunked(const torch::Tensor& x_in, const torch::Tensor& dt_in, const torch::Tensor& a_in,
                               const torch::Tensor& b_in, const torch::Tensor& c_in, int64_t chunk,
                               const torch::Tensor& initial_state) {
  check_scan_args(x_in, dt_in, a_in, b_in, c_in, initial_state);
  QAD_CHECK(chunk > 0, "ssd scan: chunk size must be positive, got {}", chunk);
  const auto f = torch::kFloat32;
  const int64_t bs = x_in.size(0), t = x_in.size(1), h = x_in.size(2), p = x_in.size(3), n = b_in.size(3);
  const int64_t pad = (chunk - t % chunk) % chunk, nc = (t + pad) / chunk, l = chunk;
  auto padded = [&](const torch::Tensor& v) {
    auto w = v.to(f);
    if (pad == 0) return w;
    auto shape = w.sizes().vec();
    shape[1] = pad;
    return torch::cat({w, torch::zeros(shape, w.options())}, 1);
  };
  // Chunked layouts: [B, nc, H, L, ...].
  auto x = padded(x_in).view({bs, nc, l, h, p}).permute({0, 1, 3, 2, 4});
  auto dt = padded(dt_in).view({bs, nc, l, h}).permute({0, 1, 3, 2});
  auto b = padded(b_in).view({bs, nc, l, h, n}).permute({0, 1, 3, 2, 4});
  auto c = padded(c_in).view({bs, nc, l, h, n}).permute({0, 1, 3, 2, 4});
  auto ad = dt * a_in.to(f).view({1, 1, h, 1});  // log decay per token; 0 on padding
  auto acum = ad.cumsum(-1);
  auto xdt = x * dt.unsqueeze(-1);
  // Within a chunk: y_i = sum_{j <= i} (C_i . B_j) exp(a_{j+1} + ... + a_i) dt_j x_j.
  auto y = torch::matmul(torch::matmul(c, b.transpose(-1, -2)) * segment_sum(ad).exp(), xdt);
  // Each chunk's own contribution to the state after it, then the state recurrence across chunks.
  auto decay_to_end = (acum.narrow(-1, l - 1, 1) - acum).exp();
  auto chunk_states = torch::matmul((xdt * decay_to_end.unsqueeze(-1)).transpose(-1, -2), b);  // [B, nc, H, P, N]
  auto chunk_decay = acum.select(-1, l - 1).exp();                                           // [B, nc, H]
  auto state = initial_state.defined() ? initial_state.to(f) : torch::zeros({bs, h, p, n}, x.options());
  std::vector<torch::Tensor> entering;
  entering.reserve(static_cast<size_t>(nc));
  for (int64_t k = 0; k < nc; ++k) {
    entering.push_back(state);
    state = state * chunk_decay.select(1, k).unsqueeze(-1).unsqueeze(-1) + chunk_states.select(1, k);
  }
  // From the state entering the chunk: y_i += exp(a_1 + ... + a_i) C_i . S.
  auto prev = torch::stack(entering, 1);  // [B, nc, H, P, N]
  y = y + torch::matmul(c, prev.transpose(-1, -2)) * acum.exp().unsqueeze(-1);
  y = y.permute({0, 1, 3, 2, 4}).reshape({bs, nc * l, h, p}).narrow(1, 0, t);
  return {y, state};
}

SsdScanOutput ssd_scan_sequential(const torch::Tensor& x_in, const torch::Tensor& dt_in, const torch::Tensor& a_in,
                                  const torch::Tensor& b_in, const torch::Tensor& c_in,
                                  const torch::Tensor& initial_state) {
  check_scan_args(x_in, dt_in, a_in, b_in, c_in, initial_state);
  const auto f = x_in.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const int64_t bs = x_in.size(0), t = x_in.size(1), h = x_in.size(2), p = x_in.size(3), n = b_in.size(3);
  auto x = x_in.to(f), dt = dt_in.to(f), a = a_in.to(f), b = b_in.to(f), c = c_in.to(f);
  auto state = initial_state.defined() ? initial_state.to(f) : torch::zeros({bs, h, p, n}, x.options());
  std::vector<torch::Tensor> ys;
  ys.reserve(static_cast<size_t>(t));
  for (int64_t i = 0; i < t; ++i) {
    auto dti = dt.select(1, i);                                    // [B, H]
    auto decay = (dti * a).exp().unsqueeze(-1).unsqueeze(-1);      // [B, H, 1, 1]
    auto xi = x.select(1, i) * dti.unsqueeze(-1);                  // [B, H, P]
    state = state * decay + xi.unsqueeze(-1) * b.select(1, i).unsqueeze(2);
    ys.push_back(torch::matmul(state, c.select(1, i).unsqueeze(-1)).squeeze(-1));  // [B, H, P]
  }
  return {torch::stack(ys, 1), state};
}

torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& gate, const torch::Tensor& weight,
                             int64_t group_size, double eps) {
  QAD_CHECK(x.size(-1) % group_size == 0, "gated RMSNorm: {} channels do not split into groups of {}", x.size(-1),
            group_size);
  auto h = x.to(torch::kFloat32) * torch::silu(gate.to(torch::kFloat32));
  auto shape = h.sizes().vec();
  auto grouped_shape = shape;
  grouped_shape.back() = shape.back() / group_size;
  grouped_shape.push_back(group_size);
  auto g = h.view(grouped_shape);
  g = g * torch::rsqrt(g.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * g.view(shape).to(x.scalar_type());
}

Conv1dParamsImpl::Conv1dParamsImpl(int64_t channels, int64_t kernel, bool has_bias) {
  weight = register_parameter("weight", torch::empty({channels, 1, kernel}));
  if (has_bias) bias = register_parameter("bias", torch::empty({channels}));
}

GatedRMSNormImpl::GatedRMSNormImpl(int64_t dim, int64_t group_size, double eps) : group_size(group_size), eps(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

Mamba2MixerImpl::Mamba2MixerImpl(const ModelConfig& c, const std::string& prefix) {
  QAD_CHECK(c.hybrid.has_value(), "Mamba2Mixer: the config has no NemotronH section");
  cfg_ = c.hybrid->mamba;
  const auto& m = cfg_;
  in_proj = register_module("in_proj", Linear(prefix + ".in_proj", c.hidden_size, m.in_proj_size(), m.proj_bias));
  conv1d = register_module("conv1d", Conv1dParams(m.conv_dim(), m.conv_kernel, m.conv_bias));
  dt_bias = register_parameter("dt_bias", torch::ones({m.num_heads}));
  A_log = register_parameter("A_log", torch::zeros({m.num_heads}));
  D = register_parameter("D", torch::ones({m.num_heads}));
  norm = register_module("norm", GatedRMSNorm(m.inner(), m.inner() / m.n_groups, c.rms_norm_eps));
  out_proj = register_module("out_proj", Linear(prefix + ".out_proj", m.inner(), c.hidden_size, m.proj_bias));
}

torch::Tensor Mamba2MixerImpl::forward(const torch::Tensor& x_in, const torch::Tensor& token_mask, MambaState* state) {
  const auto& m = cfg_;
  const int64_t bs = x_in.size(0), t = x_in.size(1), inner = m.inner(), conv_dim = m.conv_dim();
  const int64_t heads = m.num_heads, k = m.conv_kernel, gn = m.n_groups * m.state_size;
  const bool continuing = state != nullptr && state->ssm.defined();
  torch::Tensor mask;
  if (token_mask.defined() && !continuing) mask = token_mask.to(x_in.device(), x_in.scalar_type()).unsqueeze(-1);
  auto x = mask.defined() ? x_in * mask : x_in;  // padding tokens must not enter the state
  auto proj = in_proj(x);
  auto gate = proj.narrow(-1, 0, inner);
  auto xbc = proj.narrow(-1, inner, conv_dim).transpose(1, 2);  // [B, C, T]
  auto dt = proj.narrow(-1, inner + conv_dim, heads);
  // Causal depthwise conv1d over the inputs, after the previous conv_kernel inputs when continuing.
  torch::Tensor window = xbc;
  int64_t skip = 0;
  if (state != nullptr && state->conv.defined()) {
    window = torch::cat({state->conv.to(xbc.scalar_type()), xbc}, -1);
    skip = k;  // outputs for positions inside the old window are not wanted
  }
  auto conv = torch::conv1d(window, conv1d->weight, conv1d->bias, /*stride=*/1, /*padding=*/skip > 0 ? 0 : k - 1,
                            /*dilation=*/1, /*groups=*/conv_dim);
  conv = skip > 0 ? conv.narrow(-1, 1, t) : conv.narrow(-1, 0, t);
  if (state != nullptr) {
    const int64_t have = window.size(-1);
    state->conv = have >= k ? window.narrow(-1, have - k, k).detach()
                            : torch::constant_pad_nd(window, {k - have, 0}).detach();
  }
  auto xbc_act = torch::silu(conv).transpose(1, 2);  // [B, T, C]
  if (mask.defined()) xbc_act = xbc_act * mask;
  auto xs = xbc_act.narrow(-1, 0, inner);
  auto b = xbc_act.narrow(-1, inner, gn);
  auto c = xbc_act.narrow(-1, inner + gn, gn);
  // transformers: softplus in the model dtype, then the clamp to (time_step_min, inf); the scan in FP32. (Its
  // single-token decode step does not clamp; here every path does, so decoding equals a recompute.)
  dt = torch::softplus(dt + dt_bias).clamp(m.dt_min, m.dt_max);
  auto a = -A_log.to(torch::kFloat32).exp();
  const int64_t rep = heads / m.n_groups;
  auto x4 = xs.reshape({bs, t, heads, m.head_dim}).to(torch::kFloat32);
  auto b4 = b.reshape({bs, t, m.n_groups, m.state_size}).to(torch::kFloat32).repeat_interleave(rep, 2);
  auto c4 = c.reshape({bs, t, m.n_groups, m.state_size}).to(torch::kFloat32).repeat_interleave(rep, 2);
  torch::Tensor s0 = continuing ? state->ssm : torch::Tensor();
  auto scan = t == 1 && continuing ? ssd_scan_sequential(x4, dt, a, b4, c4, s0)
                                   : ssd_scan_chunked(x4, dt, a, b4, c4, m.chunk_size, s0);
  if (state != nullptr) state->ssm = scan.final_state.detach();
  auto y = scan.y + D.to(torch::kFloat32).view({heads, 1}) * x4;
  auto normed = norm(y.reshape({bs, t, inner}), gate);  // FP32 (y is)
  return out_proj(normed.to(x_in.scalar_type()));
}

}  // namespace qad::model
