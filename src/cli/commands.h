// Each `qad` subcommand lives in its own cmd_*.cc and registers itself on the CLI11 app here.
#pragma once
#include <CLI/CLI.hpp>

namespace qad::cli {

void register_selfcheck(CLI::App& app);

}  // namespace qad::cli
