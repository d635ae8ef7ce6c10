// Atomic files and directories: complete under the final name, or absent; failures leave the old one.
#include <gtest/gtest.h>

#include <filesystem>

#include "util/remove_tree.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace {
namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("qad_test_" + name + "_" + std::to_string(::getpid()));
  ::qad::remove_tree(d);
  fs::create_directories(d);
  return d;
}

size_t entries(const fs::path& d) { return std::distance(fs::directory_iterator(d), fs::directory_iterator()); }

TEST(AtomicFile, WritesAndReplaces) {
  auto d = fresh_dir("write");
  qad::write_file_atomic(d / "a.txt", "first");
  qad::write_file_atomic(d / "a.txt", "second");
  EXPECT_EQ(qad::read_file(d / "a.txt"), "second");
  EXPECT_EQ(entries(d), 1u);  // no temporary left behind
  ::qad::remove_tree(d);
}

TEST(AtomicFile, FailureKeepsOldFileAndLeavesNoTemporary) {
  auto d = fresh_dir("fail");
  qad::write_file_atomic(d / "a.txt", "good");
  EXPECT_THROW(qad::write_file_atomic(d / "a.txt",
                                      [](const fs::path& tmp) {
                                        qad::write_file_atomic(tmp, "partial");
                                        throw qad::Error("simulated disk full");
                                      }),
               qad::Error);
  EXPECT_EQ(qad::read_file(d / "a.txt"), "good");
  EXPECT_EQ(entries(d), 1u);
  ::qad::remove_tree(d);
}

TEST(AtomicFile, DirectoryAppearsWholeOrNotAtAll) {
  auto d = fresh_dir("dir");
  auto out = d / "ckpt";
  qad::write_directory_atomic(out, [](const fs::path& tmp) { qad::write_file_atomic(tmp / "x", "1"); });
  EXPECT_EQ(qad::read_file(out / "x"), "1");
  EXPECT_THROW(qad::write_directory_atomic(out,
                                           [](const fs::path& tmp) {
                                             qad::write_file_atomic(tmp / "x", "2");
                                             throw qad::Error("killed half-way");
                                           }),
               qad::Error);
  EXPECT_EQ(qad::read_file(out / "x"), "1");  // the old directory is untouched
  EXPECT_EQ(entries(d), 1u);
  qad::write_directory_atomic(out, [](const fs::path& tmp) { qad::write_file_atomic(tmp / "y", "3"); });
  EXPECT_FALSE(fs::exists(out / "x"));
  EXPECT_EQ(qad::read_file(out / "y"), "3");
  EXPECT_EQ(entries(d), 1u);
  ::qad::remove_tree(d);
}

TEST(AtomicFile, ReadingMissingFileNamesIt) {
  try {
    qad::read_file("/nonexistent/qad/file.json");
    FAIL() << "no exception";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/qad/file.json"), std::string::npos);
  }
}

}  // namespace
