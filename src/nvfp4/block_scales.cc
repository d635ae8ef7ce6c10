// NVFP4 with given block scales, and the MSE search over E4M3 scale codes (see block_scales.h).
#include "nvfp4/block_scales.h"

#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "nvfp4/scales.h"
#include "util/error.h"

namespace qad::nvfp4 {
namespace {

// The blocks of x as float32 [rows, blocks, 16], the last block of each row padded with zeros.
torch::Tensor as_blocks(const torch::Tensor& x) {
  const int64_t k = x.size(-1);
  const int64_t nb = (k + kBlockSize - 1) / kBlockSize;
  auto xf = x.to(torch::kFloat32).reshape({-1, k});
  if (nb * kBlockSize != k) xf = torch::constant_pad_nd(xf, {0, nb * kBlockSize - k}, 0.0);
  return xf.reshape({-1, nb, kBlockSize});
}

// Back from [rows, blocks, 16] to x's shape and dtype.
torch::Tensor from_blocks(const torch::Tensor& y, const torch::Tensor& x) {
  const int64_t k = x.size(-1);
  auto r = y.reshape({y.size(0), -1});
  if (r.size(1) != k) r = r.narrow(1, 0, k);
  return r.reshape(x.sizes()).to(x.scalar_type());
}

// s_g = global_amax / 2688 as a float32 scalar on x's device. A true division by a tensor: LibTorch's CUDA division
// by a host scalar multiplies by its reciprocal, which rounds differently from the kernels.
torch::Tensor global_scale(const torch::Tensor& global_amax, const torch::Tensor& like) {
  auto a = global_amax.detach().to(like.device(), torch::kFloat32).reshape({});
  return a / torch::full({}, kScaleDenominator, a.options());
}

void check_args(const torch::Tensor& x, const torch::Tensor& block_scales, const torch::Tensor& global_amax,
                const char* op) {
  QAD_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) > 0, "nvfp4::{}: the input must have a non-empty last dimension",
            op);
  const auto dt = x.scalar_type();
  QAD_CHECK(dt == torch::kFloat32 || dt == torch::kFloat16 || dt == torch::kBFloat16,
            "nvfp4::{}: input dtype must be float32, float16 or bfloat16, got {}", op, c10::toString(dt));
  QAD_CHECK(global_amax.defined() && global_amax.numel() == 1, "nvfp4::{}: the global amax must be one number", op);
  if (!block_scales.defined()) return;
  QAD_CHECK(block_scales.scalar_type() == torch::kUInt8 &&
                block_scales.sizes() == torch::IntArrayRef(block_scales_shape(x.sizes())),
            "nvfp4::{}: block scales must be uint8 E4M3 codes of shape {} for an input of shape {}, got {} {}", op,
            c10::str(torch::IntArrayRef(block_scales_shape(x.sizes()))), c10::str(x.sizes()),
            c10::toString(block_scales.scalar_type()), c10::str(block_scales.sizes()));
  QAD_CHECK(block_scales.device() == x.device(), "nvfp4::{}: block scales are on {} but the input is on {}", op,
            block_scales.device().str(), x.device().str());
}

// A small constant table as float32 on `device`, made once per device and kept (never freed: the CUDA context may
// be gone before static destructors run). Built from a host vector in every call, it would be a pageable
// host-to-device copy, which waits for the device's queue to drain: a synchronisation per weight and step in
// training, and per candidate code in the MSE search.
torch::Tensor device_table(const char* name, const torch::Device& device, const std::vector<float>& values) {
  static auto* mutex = new std::mutex;
  static auto* tables = new std::map<std::string, torch::Tensor>;
  const std::string key = std::string(name) + "@" + device.str();
  std::lock_guard<std::mutex> lock(*mutex);
  auto it = tables->find(key);
  if (it == tables->end()) it = tables->emplace(key, torch::tensor(values, torch::kFloat32).to(device)).first;
  return it->second;
}

// x / (s_b s_g) per element, ±0 kept as ±0 (the kernels' quantize_element); s is [rows, blocks, 1] float32.
torch::Tensor scaled_values(const torch::Tensor& blocks, const torch::Tensor& s, const torch::Tensor& sg) {
  return torch::where(blocks == 0, blocks, blocks / (s * sg));
}

// (e2m1(q) * s_b) * s_g for the scaled values (q = e2m1_rne(scaled), the sign kept).
torch::Tensor dequantized(const torch::Tensor& scaled, const torch::Tensor& s, const torch::Tensor& sg) {
  QAD_CHECK(scaled.scalar_type() == torch::kFloat32, "nvfp4: scaled block values must be float32");
  const auto& values = device_table("e2m1", scaled.device(), {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f});
  auto magnitude = values.index({e2m1_magnitude_index(scaled.abs())});
  return torch::copysign(magnitude, scaled) * s * sg;
}

// Sum over the last dimension (16) in a fixed pairwise order: elementwise adds only, so CPU and CUDA give the same
// bits (a reduction kernel's order is its own).
torch::Tensor pairwise_sum16(torch::Tensor t) {
  for (int64_t half = kBlockSize / 2; half >= 1; half /= 2) t = t.narrow(-1, 0, half) + t.narrow(-1, half, half);
  return t.squeeze(-1);
}

}  // namespace

torch::Tensor e2m1_magnitude_index(const torch::Tensor& a) {
  // The number of rounding boundaries passed: 0.25 and 1.25 and 2.5 go down (to the even index), 0.75, 1.75, 3.5 up.
  return (a > 0.25).to(torch::kInt64) + (a >= 0.75).to(torch::kInt64) + (a > 1.25).to(torch::kInt64) +
         (a >= 1.75).to(torch::kInt64) + (a > 2.5).to(torch::kInt64) + (a >= 3.5).to(torch::kInt64) +
         (a > 5.0).to(torch::kInt64);
}

torch::Tensor decode_e4m3_codes(const torch::Tensor& codes) {
  QAD_CHECK(codes.scalar_type() == torch::kUInt8, "decode_e4m3_codes takes uint8 codes, got {}",
            c10::toString(codes.scalar_type()));
  static const std::vector<float> table = [] {
    std::vector<float> t(256);
    for (int c = 0; c < 256; ++c) t[static_cast<size_t>(c)] = e4m3_decode(static_cast<uint8_t>(c));
    return t;
  }();
  return device_table("e4m3", codes.device(), table).index({codes.to(torch::kLong)});
}

torch::Tensor fake_quantize_with_block_scales(const torch::Tensor& x, const torch::Tensor& block_scales,
                                              const torch::Tensor& global_amax) {
  QAD_CHECK(block_scales.defined(), "nvfp4::fake_quantize_with_block_scales: the block scales are undefined");
  check_args(x, block_scales, global_amax, "fake_quantize_with_block_scales");
  auto blocks = as_blocks(x);
  auto sg = global_scale(global_amax, blocks);
  auto s = decode_e4m3_codes(block_scales).reshape({blocks.size(0), blocks.size(1), 1});
  auto y = dequantized(scaled_values(blocks, s, sg), s, sg);
  auto finite = torch::isfinite(blocks).all(-1, true).logical_and(torch::isfinite(sg));
  y = torch::where(finite, y, torch::full_like(y, std::numeric_limits<float>::quiet_NaN()));
  return from_blocks(y, x);
}

namespace {

struct Held {
  torch::Tensor block_scales;
};

struct StaticFakeQuantizeFunction : public torch::autograd::Function<StaticFakeQuantizeFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& global_amax, const Held& held, bool clipped) {
    ctx->saved_data["clipped"] = clipped;
    if (clipped) ctx->save_for_backward({x, global_amax});
    return fake_quantize_with_block_scales(x, held.block_scales, global_amax.detach());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    torch::Tensor grad = grad_outputs[0];
    if (ctx->saved_data["clipped"].toBool()) {
      auto saved = ctx->get_saved_variables();
      auto inside = saved[0].abs().to(torch::kFloat32) <= saved[1].to(saved[0].device(), torch::kFloat32).reshape({});
      grad = grad * inside.to(grad.scalar_type());
    }
    return {grad, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor fake_quantize_with_block_scales_ste(const torch::Tensor& x, const torch::Tensor& block_scales,
                                                  const torch::Tensor& global_amax, StraightThrough mode) {
  // The codes travel outside autograd's inputs (uint8 tensors cannot carry gradients anyway).
  return StaticFakeQuantizeFunction::apply(x, global_amax.detach(), Held{block_scales.detach()},
                                           mode == StraightThrough::kClipped);
}

QuantizedTensor quantize_with_block_scales(const torch::Tensor& x, const torch::Tensor& block_scales,
                                           const torch::Tensor& global_amax) {
  QAD_CHECK(block_scales.defined(), "nvfp4::quantize_with_block_scales: the block scales are undefined");
  check_args(x, block_scales, global_amax, "quantize_with_block_scales");
  auto blocks = as_blocks(x);
  QAD_CHECK(torch::isfinite(blocks).all().item<bool>(), "nvfp4::quantize_with_block_scales: the tensor holds NaN or "
            "Inf; it cannot be quantized");
  auto sg = global_scale(global_amax, blocks);
  auto s = decode_e4m3_codes(block_scales).reshape({blocks.size(0), blocks.size(1), 1});
  auto scaled = scaled_values(blocks, s, sg);
  auto codes = e2m1_magnitude_index(scaled.abs()) + torch::signbit(scaled).to(torch::kInt64) * 8;
  const int64_t k = x.size(-1);
  codes = codes.reshape({codes.size(0), -1}).narrow(1, 0, k);
  if (k % 2 != 0) codes = torch::constant_pad_nd(codes, {0, 1}, 0);
  codes = codes.reshape({codes.size(0), -1, 2});
  auto packed = (codes.select(-1, 0) + codes.select(-1, 1) * 16).to(torch::kUInt8);
  QuantizedTensor q;
  q.packed = packed.reshape(packed_shape(x.sizes())).contiguous();
  q.block_scales = block_scales.contiguous().clone();
  q.global_scale = sg.clone();
  q.k = k;
  return q;
}

torch::Tensor mse_block_scales(const torch::Tensor& x, const torch::Tensor& global_amax) {
  check_args(x, torch::Tensor(), global_amax, "mse_block_scales");
  torch::NoGradGuard no_grad;
  auto all_blocks = as_blocks(x.detach());
  QAD_CHECK(torch::isfinite(all_blocks).all().item<bool>(), "nvfp4::mse_block_scales: the tensor holds NaN or Inf");
  auto sg = global_scale(global_amax, all_blocks);
  const int64_t rows = all_blocks.size(0), nb = all_blocks.size(1);
  auto out = torch::empty({rows, nb}, all_blocks.options().dtype(torch::kUInt8));
  // Rows in chunks of about 4M elements: the float64 temporaries of a whole large matrix would be many GB.
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 22) / (nb * kBlockSize));
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t n = std::min(chunk, rows - r0);
    auto blocks = all_blocks.narrow(0, r0, n);
    auto xd = blocks.to(torch::kFloat64);
    auto best_err = torch::full({n, nb}, std::numeric_limits<double>::infinity(), xd.options());
    auto best_code = torch::zeros({n, nb}, blocks.options().dtype(torch::kUInt8));
    for (int code = 0x01; code <= 0x7E; ++code) {
      auto s = torch::full({}, e4m3_decode(static_cast<uint8_t>(code)), blocks.options());
      auto d = dequantized(scaled_values(blocks, s, sg), s, sg).to(torch::kFloat64) - xd;
      auto err = pairwise_sum16(d * d);
      auto better = err <= best_err;  // ascending codes: ties go to the larger one
      best_err = torch::where(better, err, best_err);
      best_code.masked_fill_(better, static_cast<uint8_t>(code));
    }
    auto zero = blocks.abs().amax(-1) == 0;
    best_code.masked_fill_(zero, kE4M3One);
    out.narrow(0, r0, n).copy_(best_code);
  }
  return out.reshape(block_scales_shape(x.sizes()));
}

}  // namespace qad::nvfp4
