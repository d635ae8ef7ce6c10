// Early checks of output locations, so that a read-only or full disk is reported before minutes of work, as
// one line naming the flag and the fix (instead of a filesystem exception at the first write).
#pragma once
#include <filesystem>
#include <string_view>

namespace qad {

// Throws qad::Error unless a file can be created where `out` is or will be: `out` itself when it is an existing
// directory, else its nearest existing ancestor. `flag` names the option in the message ("--out").
void check_output_writable(const std::filesystem::path& out, std::string_view flag);

}  // namespace qad
