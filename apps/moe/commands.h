// commands.h — the subcommands of the `moe` command line, one file each (cmd_<name>.cpp), each
// registered on the CLI11 app by its add_<name>; common.h holds what several share.
#pragma once
#include <CLI/CLI.hpp>

namespace moe::cli {

void add_data(CLI::App& app);      // moe data
void add_train(CLI::App& app);     // moe train
void add_eval(CLI::App& app);      // moe eval
void add_generate(CLI::App& app);  // moe generate
void add_inspect(CLI::App& app);   // moe inspect (sizes; --routing: the sparse layers on held-out text)
void add_compare(CLI::App& app);   // moe compare
void add_bench(CLI::App& app);     // moe bench gemm | moe-layer | peer
void add_keys(CLI::App& app);      // moe keys
void add_sweep(CLI::App& app);     // moe sweep
void add_fit(CLI::App& app);       // moe fit
void add_report(CLI::App& app);    // moe report
void add_expand(CLI::App& app);    // moe expand
void add_lifelong(CLI::App& app);  // moe lifelong
void add_import(CLI::App& app);    // moe import
void add_logits(CLI::App& app);    // moe logits
void add_export(CLI::App& app);    // moe export
void add_tokenize(CLI::App& app);  // moe tokenize

}  // namespace moe::cli
