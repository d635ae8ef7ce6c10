// NVFP4 fake quantization with LibTorch tensor ops only. It is the baseline the benchmark measures the
// fused kernel against, and a third implementation (besides the CPU reference and the CUDA kernel)
// that the tests compare bit for bit. Written for clarity, not speed: every step is a separate op.
#include "nvfp4/block_scales.h"
#include "nvfp4/fp8.h"
#include "nvfp4/quantize.h"
#include "nvfp4/scales.h"

namespace qad::nvfp4 {

torch::Tensor fake_quantize_torch_ops(const torch::Tensor& x, const torch::Tensor& global_amax) {
  const int64_t k = x.size(-1);
  const int64_t nb = (k + kBlockSize - 1) / kBlockSize;
  auto xf = x.to(torch::kFloat32).reshape({-1, k});
  if (nb * kBlockSize != k) xf = torch::constant_pad_nd(xf, {0, nb * kBlockSize - k}, 0.0);
  auto blocks = xf.reshape({-1, nb, kBlockSize});

  // Divide by a tensor, not a scalar: LibTorch's CUDA division by a host scalar multiplies by its
  // reciprocal, which rounds differently from the true division the kernels do.
  auto denominator = torch::full({}, kScaleDenominator, blocks.options());
  auto sg = global_amax.to(torch::kFloat32).reshape({}) / denominator;
  auto finite = torch::isfinite(blocks).all(-1, true).logical_and(torch::isfinite(sg));
  auto block_amax = blocks.abs().amax(-1, true);
  auto s = (block_amax / (sg * 6.0)).clamp(kE4M3MinSubnormal, kE4M3Max);
  s = torch::where(block_amax == 0, torch::ones_like(s), e4m3_round(s));

  auto scaled = torch::where(blocks == 0, blocks, blocks / (s * sg));
  auto values = torch::tensor({0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f}, blocks.options());
  auto magnitude = values.index({e2m1_magnitude_index(scaled.abs())});
  auto y = torch::copysign(magnitude, scaled) * s * sg;
  y = torch::where(finite, y, torch::full_like(y, std::numeric_limits<float>::quiet_NaN()));

  y = y.reshape({-1, nb * kBlockSize});
  if (nb * kBlockSize != k) y = y.narrow(1, 0, k);
  return y.reshape(x.sizes()).to(x.scalar_type());
}

}  // namespace qad::nvfp4
