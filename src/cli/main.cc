// The qad command line: one binary, one subcommand per job. Errors are one readable line and exit 1.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include "cli/commands.h"
#include "qad/version.h"
#include "util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"qad: NVFP4 quantization-aware distillation (QAD, CKA-QAD, QAT, PTQ) for Hugging Face LLMs"};
  app.set_version_flag("--version", std::string("qad ") + QAD_VERSION);
  app.require_subcommand(1);
  qad::cli::launch_argv().assign(argv, argv + argc);
  auto entries = qad::cli::command_registry();
  std::stable_sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.order < b.order; });
  for (auto& e : entries) e.fn(app);
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
