// Safetensors header parsing and validation, the mmap, and sharded checkpoints. Every check names the
// file; no byte outside the file is ever touched (offsets are validated before any span is formed).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::io {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct DTypeRow {
  DType dtype;
  std::string_view name;
  std::size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8},     {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},       {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1},
};

const DTypeRow& row(DType d) {
  for (const auto& r : kDTypes) {
    if (r.dtype == d) return r;
  }
  fail("internal: unknown safetensors dtype {}", static_cast<int>(d));
}

uint64_t read_u64_le(std::string_view s) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[static_cast<std::size_t>(i)]);
  return v;
}

// Short, one-line rendering of a JSON value for messages.
std::string brief(const json& j) {
  std::string s = j.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

TensorInfo parse_entry(const std::string& name, const json& j, uint64_t data_size, const std::string& label) {
  QAD_CHECK(j.is_object(), "{}: tensor '{}': header entry must be an object, got {}", label, name, brief(j));
  for (const auto& [key, value] : j.items()) {
    QAD_CHECK(key == "dtype" || key == "shape" || key == "data_offsets",
              "{}: tensor '{}': unknown header field '{}'", label, name, key);
  }
  TensorInfo t;
  t.name = name;
  auto dt = j.find("dtype");
  QAD_CHECK(dt != j.end() && dt->is_string(), "{}: tensor '{}': missing or non-string \"dtype\"", label, name);
  auto parsed = parse_dtype(dt->get<std::string>());
  QAD_CHECK(parsed.has_value(), "{}: tensor '{}': unsupported dtype '{}' (supported: {})", label, name,
            dt->get<std::string>(), supported_dtypes());
  t.dtype = *parsed;

  auto shape = j.find("shape");
  QAD_CHECK(shape != j.end() && shape->is_array(), "{}: tensor '{}': missing or non-array \"shape\"", label, name);
  uint64_t numel = 1;
  for (const auto& d : *shape) {
    QAD_CHECK(d.is_number_unsigned() && d.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
              "{}: tensor '{}': shape {} has an entry that is not a non-negative integer", label, name, brief(*shape));
    const uint64_t dim = d.get<uint64_t>();
    QAD_CHECK(!__builtin_mul_overflow(numel, dim, &numel), "{}: tensor '{}': shape {} overflows 64 bits", label,
              name, brief(*shape));
    t.shape.push_back(static_cast<int64_t>(dim));
  }

  auto off = j.find("data_offsets");
  QAD_CHECK(off != j.end() && off->is_array() && off->size() == 2 && (*off)[0].is_number_unsigned() &&
                (*off)[1].is_number_unsigned(),
            "{}: tensor '{}': \"data_offsets\" must be [begin, end] with non-negative integers", label, name);
  t.begin = (*off)[0].get<uint64_t>();
  t.end = (*off)[1].get<uint64_t>();
  QAD_CHECK(t.begin <= t.end, "{}: tensor '{}': data_offsets [{}, {}] end before begin", label, name, t.begin, t.end);
  QAD_CHECK(t.end <= data_size,
            "{}: tensor '{}': data_offsets [{}, {}] run past the data section ({} bytes); the file is truncated or "
            "the header is wrong",
            label, name, t.begin, t.end, data_size);
  uint64_t expect = 0;
  QAD_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(row(t.dtype).size), &expect),
            "{}: tensor '{}': byte size overflows 64 bits", label, name);
  QAD_CHECK(expect == t.nbytes(), "{}: tensor '{}': {} x shape {} needs {} bytes but data_offsets span {}", label,
            name, dtype_name(t.dtype), brief(*shape), expect, t.nbytes());
  return t;
}

}  // namespace

std::size_t dtype_size(DType d) { return row(d).size; }
std::string_view dtype_name(DType d) { return row(d).name; }

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& r : kDTypes) {
    if (r.name == name) return r.dtype;
  }
  return std::nullopt;
}

std::string supported_dtypes() {
  std::string s;
  for (const auto& r : kDTypes) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (auto d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

Header parse_safetensors(std::string_view file, const std::string& label) {
  QAD_CHECK(file.size() >= 8, "{}: file is {} bytes, too short for a safetensors header (8-byte length first)", label,
            file.size());
  const uint64_t n = read_u64_le(file.substr(0, 8));
  QAD_CHECK(n <= file.size() - 8, "{}: header length {} runs past the end of the file ({} bytes); truncated file?",
            label, n, file.size());
  QAD_CHECK(n <= kMaxHeaderBytes, "{}: header length {} exceeds the {} byte limit", label, n, kMaxHeaderBytes);
  QAD_CHECK(n >= 2, "{}: header length {} is too small for a JSON object", label, n);
  const std::string_view text = file.substr(8, n);
  const uint64_t data_size = file.size() - 8 - n;

  // Duplicate top-level keys are legal JSON but ambiguous here: catch them while parsing.
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && duplicate.empty()) {
      auto key = parsed.get<std::string>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text.begin(), text.end(), cb);
  } catch (const json::exception& e) {
    std::string what = e.what();
    fail("{}: header is not valid JSON ({})", label, what.substr(0, 160));
  }
  QAD_CHECK(header.is_object(), "{}: header must be a JSON object, got {}", label, brief(header));
  QAD_CHECK(duplicate.empty(), "{}: tensor '{}' appears twice in the header", label, duplicate);

  Header h;
  h.data_offset = 8 + n;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      QAD_CHECK(value.is_object(), "{}: __metadata__ must be an object of strings", label);
      for (const auto& [mk, mv] : value.items()) {
        QAD_CHECK(mv.is_string(), "{}: __metadata__ entry '{}' must be a string, got {}", label, mk, brief(mv));
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_entry(key, value, data_size, label));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const TensorInfo* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.nbytes() == 0) continue;  // empty tensors occupy no bytes and cannot overlap
    QAD_CHECK(prev == nullptr || t.begin >= prev->end, "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", label,
              prev ? prev->name : "", prev ? prev->begin : 0, prev ? prev->end : 0, t.name, t.begin, t.end);
    prev = &t;
  }
  return h;
}

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  QAD_CHECK(fd >= 0, "{}: cannot open: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path.string());
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    data_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (data_ == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      data_ = nullptr;
      fail("{}: cannot mmap {} bytes: {}", path.string(), size_, std::strerror(err));
    }
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

SafetensorsFile::SafetensorsFile(const fs::path& path) : map_(path) {
  header_ = parse_safetensors(map_.bytes(), path.string());
  for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& path) {
  return std::make_shared<SafetensorsFile>(path);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& t) const {
  return {mutable_data(t), static_cast<std::size_t>(t.nbytes())};
}

std::byte* SafetensorsFile::mutable_data(const TensorInfo& t) const {
  return map_.writable_data() + header_.data_offset + t.begin;
}

Checkpoint Checkpoint::open(const fs::path& dir_or_file) {
  Checkpoint c;
  c.location_ = dir_or_file;
  auto add_file = [&](const fs::path& p) {
    auto f = SafetensorsFile::open(p);
    c.files_.push_back(f);
    return f;
  };
  auto add_all = [&](const std::shared_ptr<SafetensorsFile>& f) {
    for (const auto& t : f->tensors()) {
      auto [it, inserted] = c.entries_.emplace(t.name, Entry{f, &t});
      QAD_CHECK(inserted, "{}: tensor '{}' is in both {} and {}", dir_or_file.string(), t.name,
                it->second.file->path().filename().string(), f->path().filename().string());
    }
  };
  if (fs::is_regular_file(dir_or_file)) {
    add_all(add_file(dir_or_file));
    return c;
  }
  QAD_CHECK(fs::is_directory(dir_or_file), "{}: no such checkpoint directory or file", dir_or_file.string());
  const fs::path index_path = dir_or_file / "model.safetensors.index.json";
  if (!fs::exists(index_path)) {
    const fs::path single = dir_or_file / "model.safetensors";
    QAD_CHECK(fs::exists(single), "{}: neither model.safetensors nor model.safetensors.index.json is there",
              dir_or_file.string());
    add_all(add_file(single));
    return c;
  }
  json index;
  try {
    index = json::parse(read_file(index_path));
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", index_path.string(), std::string(e.what()).substr(0, 160));
  }
  QAD_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
            "{}: missing \"weight_map\" object", index_path.string());
  std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    QAD_CHECK(shard.is_string(), "{}: weight_map['{}'] must be a file name", index_path.string(), name);
    const std::string file = shard.get<std::string>();
    QAD_CHECK(!file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
              "{}: weight_map['{}'] names '{}', which is not a file in this directory", index_path.string(), name, file);
    if (!shards.count(file)) {
      QAD_CHECK(fs::exists(dir_or_file / file), "{}: shard '{}' (holding '{}') is missing", index_path.string(), file,
                name);
      shards[file] = add_file(dir_or_file / file);
    }
  }
  for (const auto& [file, f] : shards) add_all(f);
  for (const auto& [name, shard] : index["weight_map"].items()) {
    auto it = c.entries_.find(name);
    QAD_CHECK(it != c.entries_.end(), "{}: tensor '{}' is listed for shard '{}' but that shard does not contain it",
              index_path.string(), name, shard.get<std::string>());
    QAD_CHECK(it->second.file->path().filename() == shard.get<std::string>(),
              "{}: tensor '{}' is listed for shard '{}' but found in '{}'", index_path.string(), name,
              shard.get<std::string>(), it->second.file->path().filename().string());
  }
  QAD_CHECK(c.entries_.size() == index["weight_map"].size(),
            "{}: the shards hold {} tensors but weight_map lists {}; the index is stale", index_path.string(),
            c.entries_.size(), index["weight_map"].size());
  return c;
}

const Checkpoint::Entry* Checkpoint::find(std::string_view name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

const Checkpoint::Entry& Checkpoint::at(std::string_view name) const {
  const Entry* e = find(name);
  QAD_CHECK(e != nullptr, "{}: tensor '{}' is missing", location_.string(), name);
  return *e;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

}  // namespace qad::io
