// Rules over the source tree that the compiler cannot enforce. std::filesystem::remove_all binds to LibTorch 2.x's
// own copy of the std::filesystem symbols in programs linked against libtorch.so and jumps through a null pointer
// there (a test crashed that way on the H200, LibTorch 2.11): every program that links LibTorch uses
// qad::remove_tree (src/util/remove_tree.h) instead. Only torch-free programs (tests/usage) may call remove_all.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

const fs::path kRoot = QAD_SOURCE_DIR;

std::vector<std::string> remove_all_callers() {
  std::vector<std::string> found;
  for (const char* dir : {"src", "tests", "bench", "tools"}) {
    if (!fs::exists(kRoot / dir)) continue;
    for (const auto& entry : fs::recursive_directory_iterator(kRoot / dir)) {
      const auto ext = entry.path().extension();
      if (!entry.is_regular_file() || (ext != ".cc" && ext != ".h" && ext != ".cu" && ext != ".cuh")) continue;
      const auto rel = fs::relative(entry.path(), kRoot).generic_string();
      if (rel.rfind("src/util/remove_tree", 0) == 0 || rel.rfind("tests/usage/", 0) == 0 ||
          rel == "tests/util/source_rules_test.cc") {
        continue;
      }
      std::ifstream in(entry.path());
      std::stringstream text;
      text << in.rdbuf();
      if (text.str().find("remove_all(") != std::string::npos) found.push_back(rel);
    }
  }
  return found;
}

TEST(SourceRules, NoStdFilesystemRemoveAllInProgramsThatLinkLibTorch) {
  const auto callers = remove_all_callers();
  std::string list;
  for (const auto& c : callers) list += "\n  " + c;
  EXPECT_TRUE(callers.empty()) << "use qad::remove_tree (util/remove_tree.h) instead of std::filesystem::remove_all in:"
                               << list;
}

TEST(SourceRules, TheScanSeesTheSourceTree) {
  // The rule above passes vacuously if the scan finds nothing: the exempt implementation must be where it says.
  EXPECT_TRUE(fs::exists(kRoot / "src/util/remove_tree.cc"));
}

}  // namespace
