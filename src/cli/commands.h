// Each `qad` subcommand lives in its own cmd_<name>.cc, which registers itself with
// QAD_REGISTER_COMMAND(order, register_fn); main() adds them to the CLI11 app in `order`.
#pragma once
#include <CLI/CLI.hpp>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace qad::cli {

using RegisterFn = std::function<void(CLI::App&)>;

struct CommandEntry {
  int order;  // position in `qad --help`: the main workflow first
  RegisterFn fn;
};

inline std::vector<CommandEntry>& command_registry() {
  static std::vector<CommandEntry> entries;
  return entries;
}

// The process's command line as main() received it (the local launcher re-runs it for each rank).
inline std::vector<std::string>& launch_argv() {
  static std::vector<std::string> argv;
  return argv;
}

// The flags every command spells the same way (docs/cli.md lists them).

// --out DIR|FILE (required: checked by the caller's callback, so that the old spelling also satisfies it).
// --output, the old spelling of `data prepare` and `tokenize`, is still accepted with a note for one release.
inline CLI::Option* add_out_option(CLI::App* cmd, std::string& out, const std::string& help) {
  auto* primary = cmd->add_option("--out", out, help);
  auto* old = cmd->add_option("--output", out, "deprecated spelling of --out")->group("");
  old->each([](const std::string&) {
    std::fprintf(stderr, "qad: note: --output is now --out, as in every other command; --output will be removed in "
                         "the next release\n");
  });
  return primary;
}

// --on-bad-line skip|error for every command that reads line-oriented input; skip (the default) reports each
// bad line with its file and line number and counts them in the output.
inline CLI::Option* add_on_bad_line_option(CLI::App* cmd, std::string& value, const std::string& what) {
  value = "skip";
  return cmd->add_option("--on-bad-line", value, what + " that do not parse: skip (report each with file:line and go "
                         "on) or error (stop at the first)")
      ->check(CLI::IsMember({"skip", "error"}))
      ->capture_default_str();
}

struct CommandRegistrar {
  CommandRegistrar(int order, RegisterFn fn) { command_registry().push_back({order, std::move(fn)}); }
};

}  // namespace qad::cli

#define QAD_CLI_CONCAT2(a, b) a##b
#define QAD_CLI_CONCAT(a, b) QAD_CLI_CONCAT2(a, b)
#define QAD_REGISTER_COMMAND(order, fn) \
  static ::qad::cli::CommandRegistrar QAD_CLI_CONCAT(qad_command_registrar_, __LINE__)(order, fn)
