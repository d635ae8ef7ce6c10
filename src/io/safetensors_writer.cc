// Safetensors writer: header layout, single files and sharded checkpoints with an index.
#include "io/safetensors_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::io {
namespace fs = std::filesystem;
using nlohmann::json;

std::string safetensors_header(const std::vector<TensorRef>& tensors,
                               const std::map<std::string, std::string>& metadata,
                               std::vector<std::size_t>* data_order) {
  std::vector<std::size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const auto sa = dtype_size(tensors[a].dtype), sb = dtype_size(tensors[b].dtype);
    return sa != sb ? sa > sb : tensors[a].name < tensors[b].name;
  });
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (std::size_t i : order) {
    const auto& t = tensors[i];
    QAD_CHECK(!t.name.empty() && t.name != "__metadata__", "safetensors writer: invalid tensor name '{}'", t.name);
    QAD_CHECK(names.insert(t.name).second, "safetensors writer: tensor '{}' given twice", t.name);
    uint64_t numel = 1;
    for (auto d : t.shape) {
      QAD_CHECK(d >= 0, "safetensors writer: tensor '{}' has a negative dimension", t.name);
      numel *= static_cast<uint64_t>(d);
    }
    QAD_CHECK(numel * dtype_size(t.dtype) == t.bytes.size(),
              "safetensors writer: tensor '{}' is {} x {} elements = {} bytes but {} bytes were given", t.name,
              dtype_name(t.dtype), numel, numel * dtype_size(t.dtype), t.bytes.size());
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = h.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  if (data_order != nullptr) *data_order = std::move(order);
  return out + text;
}

void write_safetensors(const fs::path& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<std::size_t> order;
  const std::string header = safetensors_header(tensors, metadata, &order);
  write_file_atomic(path, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    QAD_CHECK(out.good(), "cannot create {}: {}", tmp.string(), std::strerror(errno));
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (std::size_t i : order) {
      const auto& b = tensors[i].bytes;
      out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    }
    out.flush();
    QAD_CHECK(out.good(), "cannot write {}: {}; is the disk full?", path.string(), std::strerror(errno));
  });
}

std::vector<fs::path> write_checkpoint(const fs::path& dir, const std::vector<TensorRef>& tensors,
                                       const CheckpointWriteOptions& options) {
  QAD_CHECK(fs::is_directory(dir), "{}: checkpoint directory does not exist", dir.string());
  if (options.max_shard_bytes == 0) {
    const fs::path p = dir / (options.base + ".safetensors");
    write_safetensors(p, tensors, options.metadata);
    return {p};
  }
  std::vector<std::vector<TensorRef>> shards(1);
  uint64_t current = 0, total = 0;
  for (const auto& t : tensors) {
    if (!shards.back().empty() && current + t.bytes.size() > options.max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(t);
    current += t.bytes.size();
    total += t.bytes.size();
  }
  std::vector<fs::path> written;
  json weight_map = json::object();
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const std::string name = fmt::format("{}-{:05d}-of-{:05d}.safetensors", options.base, s + 1, shards.size());
    write_safetensors(dir / name, shards[s], options.metadata);
    for (const auto& t : shards[s]) weight_map[t.name] = name;
    written.push_back(dir / name);
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  const fs::path index_path = dir / (options.base + ".safetensors.index.json");
  write_file_atomic(index_path, index.dump(2) + "\n");
  written.push_back(index_path);
  return written;
}

}  // namespace qad::io
