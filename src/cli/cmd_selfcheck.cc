// `qad selfcheck`: quantizes random tensors of several distributions to NVFP4 and prints the error table,
// checking on the way that the fused kernel, quantize→dequantize and the tensor-op formulation agree bit
// for bit (and CPU with CUDA, when a GPU is present). Fails with exit 1 on any disagreement.
#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>

#include "cli/commands.h"
#include "model/device.h"
#include "nvfp4/quantize.h"
#include "util/error.h"

namespace qad::cli {
namespace {

struct SelfcheckOptions {
  int64_t rows = 1024;
  int64_t cols = 4096;
  uint64_t seed = 0;
  std::string device = "auto";
};

torch::Tensor sample(const std::string& kind, int64_t rows, int64_t cols, torch::Generator& gen) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  if (kind == "normal") return torch::randn({rows, cols}, gen, opts);
  if (kind == "uniform") return torch::rand({rows, cols}, gen, opts) * 2 - 1;
  if (kind == "laplace") {
    auto u = torch::rand({rows, cols}, gen, opts) - 0.5;
    return -torch::sign(u) * torch::log1p(-2 * u.abs());
  }
  // LLM-like activations: mostly normal with a few channels 50x larger.
  auto x = torch::randn({rows, cols}, gen, opts);
  auto outlier_cols = torch::randperm(cols, gen, torch::kLong).narrow(0, 0, std::max<int64_t>(1, cols / 256));
  x.index_put_({torch::indexing::Slice(), outlier_cols}, x.index({torch::indexing::Slice(), outlier_cols}) * 50);
  return x;
}

bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  auto af = a.to(torch::kFloat32).cpu(), bf = b.to(torch::kFloat32).cpu();
  auto both_nan = torch::isnan(af).logical_and(torch::isnan(bf));
  auto eq = (af == bf).logical_and(torch::signbit(af) == torch::signbit(bf)).logical_or(both_nan);
  return eq.all().item<bool>();
}

int run(const SelfcheckOptions& o) {
  // auto: CUDA only when this build also has the CUDA kernels to check.
  const auto dev = o.device == "auto" && !nvfp4::has_cuda_kernels() ? torch::Device(torch::kCPU)
                                                                    : model::parse_device(o.device);
  fmt::print("qad selfcheck: NVFP4 (E2M1 elements, E4M3 scales per 16, FP32 global scale) on {} x {} tensors, "
             "seed {}, device {}\n\n",
             o.rows, o.cols, o.seed, dev.str());
  fmt::print("{:<10} {:<6} {:>9} {:>9} {:>12} {:>7} {:>10} {:>8}\n", "dist", "dtype", "rel.RMSE", "SQNR dB",
             "max|e|/amax", "zero %", "fused==ref", "ms");
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(o.seed);
  bool all_ok = true;
  for (std::string dist : {"normal", "uniform", "laplace", "outliers"}) {
    auto x32 = sample(dist, o.rows, o.cols, gen);
    for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      auto x = x32.to(dtype).to(dev);
      auto a = nvfp4::compute_amax(x);
      auto t0 = std::chrono::steady_clock::now();
      auto y = nvfp4::fake_quantize(x, a);
      if (dev.is_cuda()) torch::cuda::synchronize();
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      auto roundtrip = nvfp4::dequantize(nvfp4::quantize(x, a), dtype);
      auto tensor_ops = nvfp4::fake_quantize_torch_ops(x, a);
      std::string verdict;
      if (!same_bits(y, roundtrip)) verdict += "NO:roundtrip ";
      if (!same_bits(y, tensor_ops)) verdict += "NO:tensor-ops ";
      if (dev.is_cuda() && !same_bits(y, nvfp4::fake_quantize(x.cpu(), a.cpu()))) verdict += "NO:cpu ";
      const bool ok = verdict.empty();
      all_ok = all_ok && ok;
      auto xf = x.to(torch::kFloat64), e = y.to(torch::kFloat64) - xf;
      double rel = std::sqrt(e.pow(2).sum().item<double>() / xf.pow(2).sum().item<double>());
      double maxe = e.abs().max().item<double>() / a.item<float>();
      double zeros = 100.0 * (y == 0).sum().item<int64_t>() / static_cast<double>(y.numel());
      fmt::print("{:<10} {:<6} {:>9.4f} {:>9.2f} {:>12.4f} {:>7.2f} {:>10} {:>8.2f}\n", dist,
                 dtype == torch::kFloat32 ? "fp32" : "bf16", rel, -20 * std::log10(rel), maxe, zeros,
                 ok ? "yes" : verdict, ms);
    }
  }
  fmt::print("\n{}\n", all_ok ? "self-check passed: all implementations agree bit for bit"
                              : "self-check FAILED: implementations disagree (see the fused==ref column)");
  return all_ok ? 0 : 1;
}

}  // namespace

void register_selfcheck(CLI::App& app) {
  auto opts = std::make_shared<SelfcheckOptions>();
  auto* cmd = app.add_subcommand("selfcheck", "Quantize random tensors to NVFP4 and print the error table");
  cmd->footer("Examples:\n  qad selfcheck --rows 256 --cols 4096 --device cpu");  // each one is run by tests/usage
  cmd->add_option("--rows", opts->rows, "rows of each test tensor")->check(CLI::PositiveNumber);
  cmd->add_option("--cols", opts->cols, "columns (the quantized dimension)")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", opts->seed, "random seed");
  cmd->add_option("--device", opts->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->callback([opts] {
    if (int rc = run(*opts); rc != 0) throw CLI::RuntimeError(rc);
  });
}

QAD_REGISTER_COMMAND(900, register_selfcheck);

}  // namespace qad::cli
