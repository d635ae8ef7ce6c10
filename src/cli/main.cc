// The qad command line: one binary, one subcommand per job. Errors are one readable line and exit 1.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <exception>

#include "cli/commands.h"
#include "qad/version.h"
#include "util/error.h"

namespace {
void skip_callbacks(CLI::App& app) {
  for (auto* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    sub->callback(std::function<void()>());
    skip_callbacks(*sub);
  }
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qad: NVFP4 quantization-aware distillation (QAD, CKA-QAD, QAT, PTQ) for Hugging Face LLMs"};
  app.set_version_flag("--version", std::string("qad ") + QAD_VERSION);
  app.require_subcommand(1);
  qad::cli::launch_argv().assign(argv, argv + argc);
  auto entries = qad::cli::command_registry();
  std::stable_sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.order < b.order; });
  for (auto& e : entries) e.fn(app);
  // QAD_PARSE_ONLY=1: parse and check the command line (options, values, required flags), then exit 0 without
  // running the command; tests/usage checks every example in the help texts this way.
  if (const char* p = std::getenv("QAD_PARSE_ONLY"); p != nullptr && std::string(p) == "1") skip_callbacks(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Error& e) {
    return app.exit(e);
  } catch (const qad::Error& e) {
    std::fprintf(stderr, "qad: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qad: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
