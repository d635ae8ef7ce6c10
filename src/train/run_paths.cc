// describe_paths / reconcile_paths (see run_paths.h).
#include "train/run_paths.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <vector>

namespace qad::train {
namespace fs = std::filesystem;
namespace {

struct PathSetting {
  const char* section;
  const char* key;
};
constexpr PathSetting kPathSettings[] = {
    {"run", "teacher"}, {"data", "path"}, {"data", "valid_path"}, {"quant", "student"}};

uint64_t fnv1a(uint64_t h, const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(p[i]);
    h *= 0x100000001b3ull;
  }
  return h;
}

// Hash of [offset, offset + n) of a file (fewer bytes near its end).
uint64_t hash_range(std::ifstream& in, uint64_t h, uint64_t offset, uint64_t n) {
  std::vector<char> buf(static_cast<size_t>(std::min<uint64_t>(n, 1 << 20)));
  in.clear();
  in.seekg(static_cast<std::streamoff>(offset));
  while (n > 0 && in) {
    in.read(buf.data(), static_cast<std::streamsize>(std::min<uint64_t>(n, buf.size())));
    const auto got = static_cast<uint64_t>(in.gcount());
    if (got == 0) break;
    h = fnv1a(h, buf.data(), static_cast<size_t>(got));
    n -= got;
  }
  return h;
}

uint64_t file_hash(const fs::path& p, uint64_t size, uint64_t edge) {
  std::ifstream in(p, std::ios::binary);
  uint64_t h = 0xcbf29ce484222325ull;
  if (!in) return h;
  h = hash_range(in, h, 0, std::min(size, edge));
  if (size > edge) h = hash_range(in, h, std::max(edge, size - edge), std::min(edge, size - edge));
  return h;
}

std::string canonical_or_absolute(const fs::path& p) {
  std::error_code ec;
  auto c = fs::weakly_canonical(fs::absolute(p, ec), ec);
  return (ec ? fs::absolute(p).lexically_normal() : c).string();
}

}  // namespace

std::string content_identity(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    const auto size = fs::file_size(path, ec);
    return fmt::format("file {} bytes, fnv1a {:016x}", size, file_hash(path, size, uint64_t{1} << 20));
  }
  if (fs::is_directory(path, ec)) {
    std::vector<std::pair<std::string, uint64_t>> files;
    for (fs::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
      if (!it->is_regular_file(ec)) continue;
      const auto rel = it->path().lexically_relative(path).string();
      if (rel.empty() || rel[0] == '.') continue;  // temporaries and hidden files are not the content
      files.emplace_back(rel, it->file_size(ec));
    }
    std::sort(files.begin(), files.end());
    uint64_t h = 0xcbf29ce484222325ull;
    for (const auto& [rel, size] : files) {
      const auto entry = fmt::format("{}\n{}\n{:016x}\n", rel, size, file_hash(path / rel, size, 64 << 10));
      h = fnv1a(h, entry.data(), entry.size());
    }
    return fmt::format("directory of {} files, fnv1a {:016x}", files.size(), h);
  }
  return "missing";
}

nlohmann::json describe_paths(const TrainConfig& cfg) {
  const auto config = cfg.to_json();
  nlohmann::json out = nlohmann::json::object();
  for (const auto& s : kPathSettings) {
    const auto v = config[s.section].value(s.key, std::string());
    if (v.empty()) continue;
    out[fmt::format("{}.{}", s.section, s.key)] = {
        {"given", v}, {"canonical", canonical_or_absolute(v)}, {"identity", content_identity(v)}};
  }
  return out;
}

void reconcile_paths(const TrainConfig& cfg, nlohmann::json& saved_config, const nlohmann::json& saved_paths) {
  const auto now = cfg.to_json();
  if (saved_config.contains("run") && saved_config["run"].is_object()) saved_config["run"]["out"] = now["run"]["out"];
  for (const auto& s : kPathSettings) {
    if (!saved_config.contains(s.section) || !saved_config[s.section].is_object()) continue;
    auto& saved_section = saved_config[s.section];
    if (!saved_section.contains(s.key) || !saved_section[s.key].is_string()) continue;
    const auto before = saved_section[s.key].get<std::string>();
    const auto after = now[s.section].value(s.key, std::string());
    if (before == after || before.empty() || after.empty()) continue;
    const auto key = fmt::format("{}.{}", s.section, s.key);
    const nlohmann::json rec = saved_paths.is_object() ? saved_paths.value(key, nlohmann::json::object())
                                                       : nlohmann::json::object();
    const std::string saved_canonical = rec.value("canonical", std::string());
    // Runs saved before "paths" was recorded: both spellings resolved from the current directory.
    const bool same_place = saved_canonical.empty() ? canonical_or_absolute(before) == canonical_or_absolute(after)
                                                    : saved_canonical == canonical_or_absolute(after);
    const std::string saved_identity = rec.value("identity", std::string());
    const bool same_content = !saved_identity.empty() && saved_identity != "missing" &&
                              saved_identity == content_identity(after);
    if (same_place || same_content) saved_section[s.key] = after;
  }
}

}  // namespace qad::train
