// Safetensors <-> torch tensors.
#include "io/safetensors_torch.h"

#include <cstring>

#include "util/error.h"
#include "util/torch_compat.h"

namespace qad::io {

torch::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::F64: return torch::kFloat64;
    case DType::F32: return torch::kFloat32;
    case DType::F16: return torch::kFloat16;
    case DType::BF16: return torch::kBFloat16;
    case DType::F8_E4M3: return compat::float8_e4m3_type();
    case DType::I64: return torch::kInt64;
    case DType::I32: return torch::kInt32;
    case DType::I16: return torch::kInt16;
    case DType::I8: return torch::kInt8;
    case DType::U8: return torch::kUInt8;
    case DType::BOOL: return torch::kBool;
  }
  fail("internal: unknown safetensors dtype {}", static_cast<int>(d));
}

DType from_scalar_type(torch::ScalarType t) {
  if (compat::kHasFloat8 && t == compat::float8_e4m3_type()) return DType::F8_E4M3;
  switch (t) {
    case torch::kFloat64: return DType::F64;
    case torch::kFloat32: return DType::F32;
    case torch::kFloat16: return DType::F16;
    case torch::kBFloat16: return DType::BF16;
    case torch::kInt64: return DType::I64;
    case torch::kInt32: return DType::I32;
    case torch::kInt16: return DType::I16;
    case torch::kInt8: return DType::I8;
    case torch::kUInt8: return DType::U8;
    case torch::kBool: return DType::BOOL;
    default: break;
  }
  fail("torch dtype {} cannot be written to safetensors (supported: {})", c10::toString(t), supported_dtypes());
}

torch::Tensor to_tensor(const std::shared_ptr<SafetensorsFile>& file, const TensorInfo& info) {
  const auto type = to_scalar_type(info.dtype);
  std::vector<int64_t> shape(info.shape.begin(), info.shape.end());
  std::byte* data = file->mutable_data(info);
  if (info.nbytes() == 0) return torch::empty(shape, torch::TensorOptions().dtype(type));
  if (reinterpret_cast<uintptr_t>(data) % dtype_size(info.dtype) != 0) {
    auto out = torch::empty(shape, torch::TensorOptions().dtype(type));
    std::memcpy(out.data_ptr(), data, info.nbytes());
    return out;
  }
  // The deleter owns a reference to the file, so the mapping lives as long as any view of it.
  auto keep = file;
  return torch::from_blob(
      data, shape, [keep](void*) mutable { keep.reset(); }, torch::TensorOptions().dtype(type));
}

torch::Tensor to_tensor(const Checkpoint::Entry& entry) { return to_tensor(entry.file, *entry.info); }

NamedTensors read_tensors(const std::filesystem::path& dir_or_file) {
  auto ckpt = Checkpoint::open(dir_or_file);
  NamedTensors out;
  for (const auto& name : ckpt.names()) out.emplace_back(name, to_tensor(ckpt.at(name)));
  return out;
}

namespace {

// Contiguous CPU copies (where needed) kept alive in `hold`, and the byte views over them.
std::vector<TensorRef> refs(const NamedTensors& tensors, std::vector<torch::Tensor>& hold) {
  std::vector<TensorRef> out;
  hold.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    QAD_CHECK(t.defined(), "safetensors writer: tensor '{}' is undefined", name);
    hold.push_back(t.detach().to(torch::kCPU).contiguous());
    const auto& c = hold.back();
    out.push_back({name, from_scalar_type(c.scalar_type()), c.sizes().vec(),
                   {static_cast<const std::byte*>(c.data_ptr()), static_cast<std::size_t>(c.numel() * static_cast<int64_t>(c.element_size()))}});
  }
  return out;
}

}  // namespace

void write_tensors(const std::filesystem::path& path, const NamedTensors& tensors,
                   const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> hold;
  write_safetensors(path, refs(tensors, hold), metadata);
}

std::vector<std::filesystem::path> write_tensors_checkpoint(const std::filesystem::path& dir,
                                                            const NamedTensors& tensors,
                                                            const CheckpointWriteOptions& options) {
  std::vector<torch::Tensor> hold;
  return write_checkpoint(dir, refs(tensors, hold), options);
}

}  // namespace qad::io
