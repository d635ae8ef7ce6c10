// Each `qad` subcommand lives in its own cmd_<name>.cc, which registers itself with
// QAD_REGISTER_COMMAND(order, register_fn); main() adds them to the CLI11 app in `order`.
#pragma once
#include <CLI/CLI.hpp>

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

struct CommandRegistrar {
  CommandRegistrar(int order, RegisterFn fn) { command_registry().push_back({order, std::move(fn)}); }
};

}  // namespace qad::cli

#define QAD_CLI_CONCAT2(a, b) a##b
#define QAD_CLI_CONCAT(a, b) QAD_CLI_CONCAT2(a, b)
#define QAD_REGISTER_COMMAND(order, fn) \
  static ::qad::cli::CommandRegistrar QAD_CLI_CONCAT(qad_command_registrar_, __LINE__)(order, fn)
