// --device / --dtype parsing (see device.h).
#include "model/device.h"

#include <charconv>
#include <optional>

#include "util/error.h"
#include "util/torch_compat.h"

namespace qad::model {
namespace {

constexpr const char* kDevices = "auto, cpu, cuda or cuda:N";

// -1: "cuda" without an index; N: "cuda:N"; nullopt: not a CUDA spelling.
std::optional<int> cuda_index(const std::string& name) {
  if (name == "cuda") return -1;
  if (name.rfind("cuda:", 0) != 0 || name.size() == 5) return std::nullopt;
  int index = 0;
  const char* first = name.data() + 5;
  const char* last = name.data() + name.size();
  auto [end, ec] = std::from_chars(first, last, index);
  if (ec != std::errc() || end != last || index < 0) return std::nullopt;
  return index;
}

}  // namespace

bool is_device_name(const std::string& name) {
  return name == "auto" || name == "cpu" || cuda_index(name).has_value();
}

torch::Device parse_device(const std::string& name, std::string_view flag) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name == "auto") return compat::cuda_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  const auto index = cuda_index(name);
  QAD_CHECK(index.has_value(), "{} {}: unknown device; choose {}", flag, name, kDevices);
  QAD_CHECK(compat::cuda_available(), "{} {}: no CUDA device is visible; use --device cpu", flag, name);
  if (*index < 0) return torch::Device(torch::kCUDA);
  const auto count = static_cast<int>(torch::cuda::device_count());
  QAD_CHECK(*index < count, "{} {}: only {} CUDA device(s) are visible (cuda:0 to cuda:{})", flag, name, count,
            count - 1);
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(*index));
}

torch::ScalarType parse_dtype(const std::string& name, torch::ScalarType auto_dtype, std::string_view flag) {
  if (name == "auto") return auto_dtype;
  if (name == "float32") return torch::kFloat32;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  fail("{} {}: unknown dtype; choose auto, float32, bfloat16 or float16", flag, name);
}

}  // namespace qad::model
