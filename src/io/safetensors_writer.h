// Safetensors writing without torch: one file, or a checkpoint split into shards of at most N bytes with
// model.safetensors.index.json. Every file appears atomically (temporary name, fsync, rename).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace qad::io {

// A tensor to write: the caller keeps `bytes` alive until the write returns.
struct TensorRef {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

// Serialises the header (8-byte length, JSON padded with spaces to a multiple of 8). Tensors are laid
// out by element size, largest first, then by name, so that every tensor starts aligned to its element
// size (zero-copy reading needs it). Checks that each tensor's byte count matches dtype x shape.
std::string safetensors_header(const std::vector<TensorRef>& tensors,
                               const std::map<std::string, std::string>& metadata,
                               std::vector<std::size_t>* data_order = nullptr);

// Writes one .safetensors file atomically.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

struct CheckpointWriteOptions {
  uint64_t max_shard_bytes = 0;  // 0: one file, model.safetensors; else shards of at most this many bytes
  std::string base = "model";    // file names: <base>.safetensors or <base>-00001-of-0000N.safetensors
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
};

// Writes the tensors into `dir` (which must exist): one file, or shards plus <base>.safetensors.index.json
// (written last). Tensors are assigned to shards in the given order; a tensor larger than the limit gets a
// shard of its own. Returns the files written.
std::vector<std::filesystem::path> write_checkpoint(const std::filesystem::path& dir,
                                                    const std::vector<TensorRef>& tensors,
                                                    const CheckpointWriteOptions& options = {});

}  // namespace qad::io
