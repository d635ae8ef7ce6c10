// A made-up corpus for the multi-process runs: `documents` one-line stories ("Once upon a time, Lily had a big
// ball. ...", names and things drawn with `seed`), prepared with stories260K's tokenizer by `qad data prepare`.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "qad_process.h"

namespace qad::testing {

inline std::filesystem::path stories_model() { return shared_dir() / "models/stories260K"; }

// Writes root/stories.jsonl and prepares it into `data` with `valid_fraction` of the documents held out.
inline ::testing::AssertionResult prepare_stories(const std::filesystem::path& root, const std::filesystem::path& data,
                                                  int documents, unsigned seed, double valid_fraction) {
  std::mt19937 rng(seed);
  const std::vector<std::string> names = {"Lily", "Tom", "Sue", "Ben", "Mia", "Max"};
  const std::vector<std::string> things = {"ball", "cat", "tree", "cake", "boat", "dog", "flower"};
  {
    std::ofstream f(root / "stories.jsonl");
    for (int d = 0; d < documents; ++d) {
      auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
      const std::string a = pick(names), b = pick(names), t = pick(things);
      f << "{\"text\": \"Once upon a time, " << a << " had a big " << t << ". One day, " << a << " saw " << b
        << " in the park. " << b << " smiled and they played with the " << t << " all day.\"}\n";
    }
  }
  const int st = wait_for(spawn({"data", "prepare", "--tokenizer", stories_model().string(), "--input",
                                 (root / "stories.jsonl").string(), "--out", data.string(), "--valid-fraction",
                                 std::to_string(valid_fraction), "--bos", "never"},
                                root / "prepare.log", {}),
                          120);
  if (exited_ok(st)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "qad data prepare failed:\n" << slurp(root / "prepare.log");
}

}  // namespace qad::testing
