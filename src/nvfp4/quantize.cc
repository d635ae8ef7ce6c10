// Argument checks and CPU/CUDA dispatch for the NVFP4 tensor operations.
#include "nvfp4/quantize.h"

#include "nvfp4/kernels.h"
#include "nvfp4/scales.h"
#include "util/error.h"

namespace qad::nvfp4 {
namespace {

void check_input(const torch::Tensor& x, const char* op) {
  QAD_CHECK(x.defined(), "nvfp4::{}: the input tensor is undefined", op);
  const auto dt = x.scalar_type();
  QAD_CHECK(dt == torch::kFloat32 || dt == torch::kFloat16 || dt == torch::kBFloat16,
            "nvfp4::{}: input dtype must be float32, float16 or bfloat16, got {}", op, c10::toString(dt));
  QAD_CHECK(x.dim() >= 1 && x.size(-1) > 0, "nvfp4::{}: input must have a non-empty last dimension, got shape {}",
            op, c10::str(x.sizes()));
}

void check_amax(const torch::Tensor& amax, const torch::Tensor& x, const char* op) {
  QAD_CHECK(amax.defined() && amax.numel() == 1 && amax.scalar_type() == torch::kFloat32,
            "nvfp4::{}: global amax must be a one-element float32 tensor", op);
  QAD_CHECK(amax.device() == x.device(), "nvfp4::{}: global amax is on {} but the input is on {}", op,
            amax.device().str(), x.device().str());
}

bool on_cuda(const torch::Tensor& x, const char* op) {
  if (!x.is_cuda()) {
    QAD_CHECK(x.is_cpu(), "nvfp4::{}: unsupported device {}", op, x.device().str());
    return false;
  }
#ifdef QAD_HAS_CUDA
  return true;
#else
  fail("nvfp4::{}: this qad build has no CUDA kernels; rebuild on a machine with CUDA and a CUDA LibTorch", op);
#endif
}

void check_out(const torch::Tensor& out, torch::IntArrayRef shape, torch::ScalarType dtype,
               const torch::Device& device, const char* what) {
  QAD_CHECK(out.defined() && out.sizes() == shape && out.scalar_type() == dtype && out.device() == device &&
                out.is_contiguous(),
            "nvfp4: output {} must be a contiguous {} tensor of shape {} on {}", what, c10::toString(dtype),
            c10::str(shape), device.str());
}

}  // namespace

bool has_cuda_kernels() {
#ifdef QAD_HAS_CUDA
  return true;
#else
  return false;
#endif
}

std::vector<int64_t> packed_shape(torch::IntArrayRef shape) {
  std::vector<int64_t> s(shape.begin(), shape.end());
  s.back() = (s.back() + 1) / 2;
  return s;
}

std::vector<int64_t> block_scales_shape(torch::IntArrayRef shape) {
  std::vector<int64_t> s(shape.begin(), shape.end());
  s.back() = (s.back() + kBlockSize - 1) / kBlockSize;
  return s;
}

torch::Tensor compute_amax(const torch::Tensor& x) {
  check_input(x, "amax");
  auto xc = x.contiguous();
  auto out = torch::zeros({}, x.options().dtype(torch::kFloat32));
#ifdef QAD_HAS_CUDA
  if (on_cuda(xc, "amax")) {
    kernels::amax_cuda(xc, out);
    return out;
  }
#else
  on_cuda(xc, "amax");
#endif
  kernels::amax_cpu(xc, out);
  return out;
}

void fake_quantize_out(const torch::Tensor& x, const torch::Tensor& global_amax, torch::Tensor& out) {
  check_input(x, "fake_quantize");
  check_amax(global_amax, x, "fake_quantize");
  check_out(out, x.sizes(), x.scalar_type(), x.device(), "of fake_quantize");
  auto xc = x.contiguous();
  auto a = global_amax.reshape({});
  if (on_cuda(xc, "fake_quantize")) {
#ifdef QAD_HAS_CUDA
    kernels::fake_quantize_cuda(xc, a, out);
#endif
    return;
  }
  kernels::fake_quantize_cpu(xc, a, out);
}

torch::Tensor fake_quantize(const torch::Tensor& x, const torch::Tensor& global_amax) {
  auto out = torch::empty_like(x, torch::MemoryFormat::Contiguous);
  fake_quantize_out(x, global_amax, out);
  return out;
}

void quantize_out(const torch::Tensor& x, const torch::Tensor& global_amax, QuantizedTensor& out) {
  check_input(x, "quantize");
  check_amax(global_amax, x, "quantize");
  auto u8 = torch::kUInt8;
  check_out(out.packed, packed_shape(x.sizes()), u8, x.device(), "packed");
  check_out(out.block_scales, block_scales_shape(x.sizes()), u8, x.device(), "block_scales");
  check_out(out.global_scale, {}, torch::kFloat32, x.device(), "global_scale");
  out.k = x.size(-1);
  auto xc = x.contiguous();
  auto a = global_amax.reshape({});
  if (on_cuda(xc, "quantize")) {
#ifdef QAD_HAS_CUDA
    kernels::quantize_cuda(xc, a, out.packed, out.block_scales, out.global_scale);
#endif
    return;
  }
  kernels::quantize_cpu(xc, a, out.packed, out.block_scales, out.global_scale);
}

QuantizedTensor quantize(const torch::Tensor& x, const std::optional<torch::Tensor>& global_amax) {
  check_input(x, "quantize");
  torch::Tensor a;
  if (global_amax) {
    a = *global_amax;
  } else {
    a = compute_amax(x);
    const float v = a.item<float>();
    QAD_CHECK(is_finite(v), "nvfp4::quantize: the tensor holds NaN or Inf (amax = {}); it cannot be quantized", v);
  }
  QuantizedTensor q;
  auto u8 = x.options().dtype(torch::kUInt8);
  q.packed = torch::empty(packed_shape(x.sizes()), u8);
  q.block_scales = torch::empty(block_scales_shape(x.sizes()), u8);
  q.global_scale = torch::empty({}, x.options().dtype(torch::kFloat32));
  quantize_out(x, a, q);
  return q;
}

void dequantize_out(const QuantizedTensor& q, torch::Tensor& out) {
  QAD_CHECK(q.k > 0 && q.packed.defined() && q.packed.dim() >= 1 && q.packed.size(-1) == (q.k + 1) / 2,
            "nvfp4::dequantize: packed tensor of shape {} does not hold K = {} elements per row",
            q.packed.defined() ? c10::str(q.packed.sizes()) : "undefined", q.k);
  std::vector<int64_t> shape(q.packed.sizes().begin(), q.packed.sizes().end());
  shape.back() = q.k;
  const auto dev = q.packed.device();
  check_out(q.block_scales, block_scales_shape(shape), torch::kUInt8, dev, "block_scales (input)");
  check_out(q.global_scale.reshape({}), {}, torch::kFloat32, dev, "global_scale (input)");
  QAD_CHECK(out.defined() && out.sizes() == torch::IntArrayRef(shape) && out.device() == dev && out.is_contiguous(),
            "nvfp4::dequantize: output must be a contiguous tensor of shape {} on {}", c10::str(shape), dev.str());
  check_input(out, "dequantize");
  auto packed = q.packed.contiguous();
  auto sg = q.global_scale.reshape({});
  if (on_cuda(packed, "dequantize")) {
#ifdef QAD_HAS_CUDA
    kernels::dequantize_cuda(packed, q.block_scales, sg, q.k, out);
#endif
    return;
  }
  kernels::dequantize_cpu(packed, q.block_scales, sg, q.k, out);
}

torch::Tensor dequantize(const QuantizedTensor& q, torch::ScalarType dtype) {
  std::vector<int64_t> shape(q.packed.sizes().begin(), q.packed.sizes().end());
  QAD_CHECK(!shape.empty(), "nvfp4::dequantize: packed tensor has no dimensions");
  shape.back() = q.k;
  auto out = torch::empty(shape, q.packed.options().dtype(dtype));
  dequantize_out(q, out);
  return out;
}

}  // namespace qad::nvfp4
