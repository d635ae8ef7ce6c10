// Output directories that cannot take the output: read-only (a read-only tmpfs as root, chmod 555 otherwise) and
// full (a 1 MiB tmpfs filled to 16 KiB of free space; root only). Every writer fails with exit status 1 and one
// line naming the path and the cause, never "internal error", and leaves an earlier output intact
// (issue #14, item 8). Where neither can be set up, the tests skip and say why.
#include <sys/mount.h>
#include <sys/stat.h>

#include "cli/cli_test_util.h"
#include "util/remove_tree.h"

namespace qad::cli_test {
namespace {

bool can_create_in(const fs::path& dir) {
  const auto probe = dir / "probe";
  std::ofstream f(probe);
  const bool ok = f.good();
  f.close();
  std::error_code ec;  // unlink on a read-only file system fails with EROFS even for a missing file
  fs::remove(probe, ec);
  return ok;
}

// Mounts a tmpfs of `size` at `dir` (empty string on success, else why not).
std::string mount_tmpfs(const fs::path& dir, const std::string& options) {
  fs::create_directories(dir);
  if (::geteuid() != 0) return "not root: cannot mount a tmpfs";
  if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str()) != 0) {
    return std::string("mount -t tmpfs -o ") + options + " failed: " + std::strerror(errno);
  }
  return "";
}

class OutputDirsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = scratch_root("output_dirs");
    write_stories(root_ / "stories.jsonl");
  }
  static void TearDownTestSuite() {
    for (const auto& m : mounts_) ::umount2(m.c_str(), MNT_DETACH);
    ::qad::remove_tree(root_);
  }
  static Outcome qad(const std::vector<std::string>& args) { return run_qad(args, root_ / "log.txt"); }

  // Every writer, aimed at `dir`.
  static void expect_every_writer_fails(const fs::path& dir, const std::vector<std::string>& cause) {
    const auto tok = stories260k().string(), data = (root_ / "stories.jsonl").string();
    struct Case {
      const char* name;
      std::vector<std::string> args;
    };
    const std::vector<Case> cases = {
        {"distill", {"distill", "--teacher", tok, "--data", data, "--out", (dir / "run").string(), "--device", "cpu",
                     "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--calib-batches", "1"}},
        {"quantize", {"quantize", "--model", tok, "--calib-data", data, "--out", (dir / "nvfp4").string(), "--device",
                      "cpu", "--calib-samples", "4", "--seq-len", "32"}},
        {"data prepare", {"data", "prepare", "--tokenizer", tok, "--input", data, "--out", (dir / "ds").string()}},
        {"tokenize", {"tokenize", "--tokenizer", tok, "--input", data, "--out", (dir / "ids.jsonl").string()}},
        {"demo", {"demo", "--smoke", "--device", "cpu", "--out", (dir / "demo").string()}},
    };
    for (const auto& c : cases) {
      const auto o = qad(c.args);
      EXPECT_TRUE(is_user_error(o, cause)) << c.name;
    }
  }

  static inline fs::path root_;
  static inline std::vector<fs::path> mounts_;
};

TEST_F(OutputDirsTest, ReadOnlyOutputIsAOneLineError) {
  const auto dir = root_ / "read_only";
  std::vector<std::string> cause;
  if (::geteuid() == 0) {
    const auto why = mount_tmpfs(dir, "ro,size=64k");
    if (!why.empty()) GTEST_SKIP() << why;
    mounts_.push_back(dir);
    cause = {"read-only"};
  } else {
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
    cause = {"write"};
  }
  ASSERT_FALSE(can_create_in(dir)) << "the directory is writable after all";
  expect_every_writer_fails(dir, cause);
}

TEST_F(OutputDirsTest, FullDiskIsAOneLineErrorAndKeepsTheEarlierOutput) {
  const auto dir = root_ / "full";
  const auto why = mount_tmpfs(dir, "size=1m");
  if (!why.empty()) GTEST_SKIP() << why;
  mounts_.push_back(dir);
  // An earlier output that must survive a failed rewrite.
  const auto earlier = dir / "ids.jsonl";
  write(earlier, "{\"ids\": [1, 2, 3]}\n");
  // Fill the disk to 16 KiB of free space.
  {
    std::ofstream ballast(dir / "ballast", std::ios::binary);
    const std::string block(4096, 'x');
    while (true) {
      ballast.write(block.data(), block.size());
      ballast.flush();
      if (!ballast) break;
      if (fs::space(dir).available < (16 << 10)) break;
    }
  }
  ASSERT_LT(fs::space(dir).available, 32u << 10);
  // Messages say "No space left on device" (from the OS) or "disk is full" / "disk full?" (qad's own checks).
  const auto tok = stories260k().string(), data = (root_ / "stories.jsonl").string();
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"quantize", "--model", tok, "--calib-data", data, "--out", (dir / "nvfp4").string(), "--device", "cpu",
            "--calib-samples", "4", "--seq-len", "32"},
           {"data", "prepare", "--tokenizer", tok, "--input", data, "--out", (dir / "ds").string()},
           {"tokenize", "--tokenizer", tok, "--input", data, "--out", earlier.string()},
           {"distill", "--teacher", tok, "--data", data, "--out", (dir / "run").string(), "--device", "cpu", "--steps",
            "2", "--batch-size", "2", "--seq-len", "32", "--calib-batches", "1"}}) {
    const auto o = qad(args);
    EXPECT_TRUE(is_user_error(o, {})) << args[0];
    const auto line = o.lines_with("qad: error:");
    if (!line.empty()) {
      EXPECT_TRUE(line[0].find("No space left") != std::string::npos || line[0].find("disk") != std::string::npos)
          << line[0];
    }
  }
  EXPECT_EQ(slurp(earlier), "{\"ids\": [1, 2, 3]}\n");
  EXPECT_FALSE(fs::exists(dir / "nvfp4"));
  EXPECT_FALSE(fs::exists(dir / "ds"));
  EXPECT_FALSE(fs::exists(dir / "run")) << "a failed start left --out behind";
}

}  // namespace
}  // namespace qad::cli_test
