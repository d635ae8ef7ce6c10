// Atomic writes: a file or directory appears under its final name complete, or not at all. A killed
// run, a full disk or an exception leaves at most a temporary ".tmp-" sibling, never a half-written
// checkpoint under the real name.
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace qad {

// Writes `bytes` to `path` through a temporary sibling, fsyncs it, then renames it over `path`.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// Calls `fill(tmp_path)` to produce a file, then fsyncs and renames it to `path`. On any exception the
// temporary is removed and the exception propagates.
void write_file_atomic(const std::filesystem::path& path,
                       const std::function<void(const std::filesystem::path&)>& fill);

// Builds a whole directory: `fill(tmp_dir)` writes into a fresh temporary sibling of `dir`, which then
// replaces `dir` (an older `dir` is moved aside and deleted only after the new one is in place).
void write_directory_atomic(const std::filesystem::path& dir,
                            const std::function<void(const std::filesystem::path&)>& fill);

// A temporary sibling name: "<dir>/.<name>.tmp-<pid>-<counter>".
std::filesystem::path temporary_sibling(const std::filesystem::path& path);

// Reads a whole file; throws qad::Error naming the file when it cannot.
std::string read_file(const std::filesystem::path& path);

}  // namespace qad
