// commands.h — the subcommands of the `moe` command line, each registered on the CLI11 app.
#pragma once
#include <CLI/CLI.hpp>

namespace moe::cli {

void add_bench(CLI::App& app);
void add_lm(CLI::App& app);

}  // namespace moe::cli
