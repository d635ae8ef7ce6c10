// remove_tree: std::filesystem::remove_all without std::filesystem. LibTorch 2.x's libtorch.so exports its
// own copy of the std::filesystem symbols, and in a program linked against it remove_all can bind to that
// copy, which jumps through a null pointer (seen with LibTorch 2.11 wheels). Use this instead everywhere.
#pragma once
#include <cstdint>
#include <filesystem>
#include <system_error>

namespace qad {

// Removes a file or a directory tree; returns the number of entries removed (0 if it did not exist).
// Throws qad::Error naming the path on failure.
std::uintmax_t remove_tree(const std::filesystem::path& path);
// The same, reporting failure through `ec` instead of throwing.
std::uintmax_t remove_tree(const std::filesystem::path& path, std::error_code& ec) noexcept;

}  // namespace qad
