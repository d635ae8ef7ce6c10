// The bridge between safetensors bytes and torch tensors: zero-copy views over the mmap (the tensor keeps
// the mapping alive), and writing named tensors. FP8 E4M3 maps to Float8_e4m3fn (LibTorch >= 2.1) or
// uint8 (1.13), see util/torch_compat.h.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"
#include "io/safetensors_writer.h"

namespace qad::io {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

torch::ScalarType to_scalar_type(DType d);
DType from_scalar_type(torch::ScalarType t);  // throws for dtypes safetensors cannot hold here

// A CPU tensor over the tensor's bytes in the mapping (copy-on-write pages: writing into it never
// changes the file). Copies only when the data is not aligned to the element size.
torch::Tensor to_tensor(const std::shared_ptr<SafetensorsFile>& file, const TensorInfo& info);
torch::Tensor to_tensor(const Checkpoint::Entry& entry);

// Every tensor of a file or checkpoint directory, in name order.
NamedTensors read_tensors(const std::filesystem::path& dir_or_file);

// Writes tensors (any device; moved to CPU and made contiguous as needed) as one file, atomically.
void write_tensors(const std::filesystem::path& path, const NamedTensors& tensors,
                   const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
// Writes tensors into a checkpoint directory (one file or shards + index), see write_checkpoint.
std::vector<std::filesystem::path> write_tensors_checkpoint(const std::filesystem::path& dir,
                                                            const NamedTensors& tensors,
                                                            const CheckpointWriteOptions& options = {});

}  // namespace qad::io
