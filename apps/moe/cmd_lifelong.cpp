// cmd_lifelong.cpp — `moe lifelong PHASES.toml`: train a sequence of phases over shifting corpora with
// each strategy (expand + freeze + distil, fine-tuning, a dense model, expand without distillation)
// and write the forgetting matrices; resumable. The file's format is in lifelong/lifelong.h.
#include <cstdio>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "lifelong/lifelong.h"

namespace moe::cli {

void add_lifelong(CLI::App& app) {
  static std::string file, out;
  static bool dry_run = false;
  static int threads = 0;
  auto* cmd = app.add_subcommand("lifelong", "Train phases over shifting corpora with several strategies and measure what "
                                             "each forgets (resumable; forgetting.{json,md,svg})");
  cmd->add_option("file", file, "Phases file (TOML; see configs/lifelong/phases.toml)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", out, "Folder of the runs and results (default: the file's out)");
  cmd->add_flag("--dry-run", dry_run, "Check the file and list the runs; train nothing");
  add_threads(cmd, threads);
  cmd->callback([] {
    apply_threads(threads);
    const LifelongPlan p = load_lifelong(file, out);
    std::string phases, strategies;
    for (const std::string& c : p.phases) phases += (phases.empty() ? "" : " -> ") + c;
    for (const std::string& s : p.strategies) strategies += (strategies.empty() ? "" : ", ") + s;
    std::printf("lifelong %s: phases %s, %d steps each; strategies %s; +%d experts a phase (freeze %s), distill weight %g; into %s\n",
                file.c_str(), phases.c_str(), p.steps, strategies.c_str(), p.expand.add_experts, name_of(p.expand.freeze),
                static_cast<double>(p.distill_weight), p.out.c_str());
    if (!dry_run) run_lifelong(p);
  });
}

}  // namespace moe::cli
