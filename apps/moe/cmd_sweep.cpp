// cmd_sweep.cpp — `moe sweep SWEEP.toml`: train every point of a grid of configurations, resumably,
// and tabulate them (results.csv, results.jsonl); the file's format is in lab/sweep.h.
#include <cstdio>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "lab/sweep.h"

namespace moe::cli {

void add_sweep(CLI::App& app) {
  static std::string file, out;
  static SweepOptions o;
  static bool dry_run = false;
  auto* cmd = app.add_subcommand("sweep", "Train a grid of configurations (resumable) and tabulate size, FLOPs, time, loss "
                                          "and balance per point (results.csv, results.jsonl)");
  cmd->add_option("file", file, "Sweep file (TOML: config, [set], [grid], [[point]], [derive]; see sweeps/)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", out, "Sweep folder (default: the file's out, else runs/sweeps/<file name>)");
  cmd->add_option("--jobs", o.jobs, "Points trained at once (each a `moe train` process)")->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o.threads, "Threads in all, shared by the jobs (default: every core)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--dry-run", dry_run, "List the points and their swept values; train nothing");
  cmd->callback([] {
    const Sweep s = load_sweep(file, out);
    if (dry_run) {
      std::printf("sweep %s: %zu points into %s\n", file.c_str(), s.points.size(), s.out.c_str());
      for (const SweepPoint& p : s.points) {
        std::printf("%s:", p.name.c_str());
        for (const auto& [k, v] : p.values) std::printf(" %s=%s", k.c_str(), v.dump().c_str());
        std::printf("\n");
      }
      return;
    }
    run_sweep(s, o);
  });
}

}  // namespace moe::cli
