// Temporaries left by killed processes: write_file_atomic / write_directory_atomic build ".<name>.tmp-<pid>-<n>"
// siblings and rename them into place; a process killed mid-write leaves its sibling behind. These functions
// find and remove the ones whose process is gone.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace qad {

// The pid in a temporary sibling's name (".<name>.tmp-<pid>-<n>"), or -1 when the name is not one.
long temporary_owner_pid(const std::string& filename);

// Removes the temporaries directly inside `dir` (not recursively) whose owner is neither this process nor a
// live process on this host. Returns what was removed; a missing `dir` removes nothing. Best effort: an entry
// that cannot be removed is left and not returned.
std::vector<std::filesystem::path> remove_stale_temporaries(const std::filesystem::path& dir);

}  // namespace qad
