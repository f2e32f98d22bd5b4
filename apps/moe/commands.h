// commands.h — the subcommands of the `moe` command line, each registered on the CLI11 app.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

namespace moe::cli {

void add_bench(CLI::App& app);
void add_lm(CLI::App& app);
void add_routing(CLI::App& app);  // `moe compare`
// `moe inspect --routing`: per MoE layer the router metrics on a corpus, as text (or JSON) and an SVG.
void inspect_routing(const std::string& ckpt, const std::string& corpus, int windows, bool train_routing,
                     const std::string& svg_path, bool json, bool allow_nonfinite);

}  // namespace moe::cli
