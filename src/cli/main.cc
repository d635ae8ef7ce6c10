// The qad command line: one binary, one subcommand per job. Errors are one readable line and exit 1.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>
#include <cstdint>

#include "cli/commands.h"
#include "qad/version.h"
#include "util/error.h"

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// "qad distil" names no command: say so and suggest the nearest one, instead of CLI11's "A subcommand is required".
std::string unknown_command_message(const CLI::App& app, const std::string& word) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto* sub : app.get_subcommands({})) {
    const auto d = edit_distance(word, sub->get_name());
    if (d < best_d) best_d = d, best = sub->get_name();
  }
  std::string msg = "unknown command '" + word + "'";
  if (!best.empty() && best_d <= std::max<size_t>(2, word.size() / 3)) msg += "; did you mean '" + best + "'?";
  return msg + " (qad --help lists the commands)";
}

}  // namespace

int main(int argc, char** argv) {
  // Line-buffered stdout even into a file or a pipe: a log tee'd under a scheduler keeps every line up to a
  // preemption (SIGKILL), and stdout and stderr lines stay in order.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CLI::App app{"qad: NVFP4 quantization-aware distillation (QAD, CKA-QAD, QAT, PTQ) for Hugging Face LLMs"};
  app.set_version_flag("--version", std::string("qad ") + QAD_VERSION);
  app.require_subcommand(1);
  qad::cli::launch_argv().assign(argv, argv + argc);
  auto entries = qad::cli::command_registry();
  std::stable_sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.order < b.order; });
  for (auto& e : entries) e.fn(app);
  // QAD_PARSE_ONLY=1: parse the command line (flags, choices, required options) and exit 0 before any command
  // runs, so that tests/usage can check that every example printed in the help texts is a valid command line.
  if (const char* p = std::getenv("QAD_PARSE_ONLY"); p != nullptr && std::string(p) == "1") {
    app.parse_complete_callback([] { throw CLI::Success(); });
  }
  const auto is_command = [&](const std::string& w) {
    for (const auto* sub : app.get_subcommands({})) {
      if (sub->check_name(w)) return true;
    }
    return false;
  };
  if (argc >= 2 && argv[1][0] != '-' && !is_command(argv[1])) {
    std::fprintf(stderr, "qad: error: %s\n", unknown_command_message(app, argv[1]).c_str());
    return 1;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::Error& e) {
    return app.exit(e);
  } catch (const qad::Error& e) {
    std::fprintf(stderr, "qad: error: %s\n", e.what());
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // A path the user gave cannot be created, written or read (read-only disk, permissions, disk full).
    const std::string where = e.path1().empty() ? std::string("a file") : e.path1().string();
    std::fprintf(stderr, "qad: error: %s: %s; check that the path is right, writable and its disk has space\n",
                 where.c_str(), e.code().message().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qad: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
