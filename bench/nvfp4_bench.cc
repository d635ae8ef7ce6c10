// NVFP4 fake-quantization benchmark. On a GPU: the fused kernel's bandwidth (bytes read + written) against
// a device-to-device copy of the same tensor measured in the same run, and its speed-up over the same
// math written with LibTorch tensor ops. On a CPU: the reference loops against the tensor-op version.
// Prints a table; the figures go to docs/benchmarks.md with the device and commit.
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "nvfp4/quantize.h"
#include "timing.h"

namespace {

using qad::bench::time_ms;

}  // namespace

int main(int argc, char** argv) {
  const bool cuda = torch::cuda::is_available() && qad::nvfp4::has_cuda_kernels();
  int64_t mib = cuda ? 512 : 32;
  if (argc > 1) mib = std::atoll(argv[1]);
  const int iters = cuda ? 30 : 5;
  const auto dev = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  const int64_t k = 4096;
  fmt::print("NVFP4 fake-quantization benchmark on {} ({} MiB per input tensor, K = {}, median of {})\n",
             cuda ? "CUDA" : "CPU", mib, k, iters);
  fmt::print("{:<7} {:<22} {:>10} {:>10} {:>12}\n", "dtype", "op", "ms", "GB/s", "ratio");
  for (auto dtype : {torch::kBFloat16, torch::kFloat16, torch::kFloat32}) {
    const int64_t elem = torch::elementSize(dtype);
    const int64_t rows = mib * 1024 * 1024 / elem / k;
    auto x = torch::randn({rows, k}, torch::TensorOptions().dtype(dtype).device(dev));
    auto y = torch::empty_like(x);
    auto a = qad::nvfp4::compute_amax(x);
    const double bytes = 2.0 * x.numel() * elem;  // read x, write y
    const double copy = time_ms([&] { y.copy_(x); }, cuda, 3, iters);
    const double fused = time_ms([&] { qad::nvfp4::fake_quantize_out(x, a, y); }, cuda, 3, iters);
    const double ops = time_ms([&] { y = qad::nvfp4::fake_quantize_torch_ops(x, a); }, cuda, 1, std::max(3, iters / 5));
    const double amax_ms = time_ms([&] { a = qad::nvfp4::compute_amax(x); }, cuda, 3, iters);
    auto gbps = [&](double ms, double b) { return b / (ms * 1e-3) / 1e9; };
    const char* dt = dtype == torch::kBFloat16 ? "bf16" : dtype == torch::kFloat16 ? "fp16" : "fp32";
    fmt::print("{:<7} {:<22} {:>10.3f} {:>10.1f} {:>12}\n", dt, "copy (baseline)", copy, gbps(copy, bytes), "1.00");
    fmt::print("{:<7} {:<22} {:>10.3f} {:>10.1f} {:>11.1f}%\n", dt, "fused fake-quant", fused, gbps(fused, bytes),
               100.0 * copy / fused);
    fmt::print("{:<7} {:<22} {:>10.3f} {:>10.1f} {:>11.1f}x\n", dt, "tensor-op fake-quant", ops, gbps(ops, bytes),
               ops / fused);
    fmt::print("{:<7} {:<22} {:>10.3f} {:>10.1f} {:>11.1f}%\n", dt, "amax (read only)", amax_ms,
               gbps(amax_ms, bytes / 2), 100.0 * (copy / 2) / amax_ms);
  }
  fmt::print("ratio: fused and amax rows = share of copy bandwidth; tensor-op row = fused speed-up over it\n");
  return 0;
}
