// cmd_compare.cpp — `moe compare`: one markdown row per run with its validation loss and the balance
// of its sparse layers, in training (from metrics.jsonl) and on held-out text (for the router
// experiments of docs/RESULTS.md). The rows come from lab/run_folder.h, which `moe report` shares.
#include <cstdio>
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "lab/run_folder.h"

namespace moe::cli {

void add_compare(CLI::App& app) {
  static std::vector<std::string> runs;
  static std::string corpus;
  static int windows = 256, last = 50;
  auto* cmd = app.add_subcommand("compare", "One markdown row per checkpoint: validation loss and routing balance");
  cmd->add_option("runs", runs, "Checkpoint folders (train.out of each run)")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--corpus", corpus, "Corpus to measure on: " + corpus_choices() + " (default: each run's own)");
  cmd->add_option("--windows", windows, "Validation windows")->check(CLI::PositiveNumber);
  cmd->add_option("--last", last, "Training steps averaged for the training-time balance")->check(CLI::PositiveNumber);
  cmd->callback([] {
    // Row by row, as each run is measured.
    for (size_t i = 0; i < runs.size(); ++i) {
      std::printf("%s", compare_markdown({compare_run(runs[i], corpus, windows, last)}, i == 0).c_str());
      std::fflush(stdout);
    }
  });
}

}  // namespace moe::cli
