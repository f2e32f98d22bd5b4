// sweep.h — `moe sweep`: train a grid of configurations and tabulate them (docs/RESULTS.md's scaling
// studies). A sweep file is TOML:
//
//   config = "configs/mixtral-tiny.toml" # optional: the config every point starts from
//   out = "runs/sweeps/experts"          # optional: the sweep folder (--out replaces it)
//   [set]                                # keys every point sets
//   "train.steps" = 300
//   [grid]                               # the cross product (keys in name order, the last fastest)
//   "model.num_local_experts" = [1, 2, 4, 8]
//   G = [1, 2, 4]                        # a variable: a name without a dot, used by [derive]
//   [[point]]                            # explicit points, after the grid
//   "model.num_local_experts" = 64
//   [derive]                             # keys computed per point (lab/expr.h), after the others
//   "model.moe_intermediate_size" = "1024 / G"
//
// Keys are `moe keys`'s section.key names, written quoted or as dotted keys. Each point trains in
// OUT/points/NAME by its own `moe train` process (NAME: "p03_num_local_experts-4"), from the config
// OUT/points/NAME.json. The sweep is resumable: run again, it skips finished points (a checkpoint at
// the last step) and resumes an unfinished one from its newest checkpoint. After each point it
// rewrites OUT/results.csv and OUT/results.jsonl (finished points, in point order; columns in
// docs/MECHANISMS.md §11).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "train/run_config.h"

namespace moe {

struct SweepPoint {
  std::string name;
  std::vector<std::pair<std::string, nlohmann::json>> values;  // swept keys, variables, derived keys
  RunConfig cfg;                                               // validated; train.out = OUT/points/NAME
};

struct Sweep {
  std::string file, out;
  nlohmann::json spec;                  // the file as JSON
  std::vector<std::string> columns;     // the names of SweepPoint::values, in order
  std::vector<SweepPoint> points;
};

// Reads and checks a sweep file and resolves every point (out: "" for the file's `out`, else its
// default "runs/sweeps/<file stem>"). Throws moe::Error naming the file and the problem: an unknown
// key, an empty grid, a variable no expression uses, a point whose config is invalid.
Sweep load_sweep(const std::string& path, const std::string& out);

struct SweepOptions {
  int jobs = 1;       // points trained at once
  int threads = 0;    // threads in all (0: every core), shared by the jobs
  std::string exe;    // the moe binary that trains each point ("": this process's own)
};

// Trains what is not finished, writing the results tables as points finish; prints progress for the
// whole sweep. Returns the results rows. Throws moe::Error naming the points that failed (after the
// others have run) and their logs.
std::vector<nlohmann::ordered_json> run_sweep(const Sweep& s, const SweepOptions& o);

// The results row of a finished point, from its run folder: the swept values, then name, experts,
// granularity, active_experts, params, active_params, non_embedding_params,
// active_non_embedding_params, embedding_params, flops_per_token, tokens, train_flops, wall_clock_s,
// tokens_per_s, val_loss, and the balance metrics (mean over the sparse layers and the last 20 steps:
// max_mean, cv, dropped, entropy).
nlohmann::ordered_json sweep_row(const SweepPoint& p);
// Is the point's run finished (a checkpoint at its last step)?
bool point_finished(const SweepPoint& p);
// Writes OUT/results.csv and OUT/results.jsonl atomically.
void write_results(const Sweep& s, const std::vector<nlohmann::ordered_json>& rows);

}  // namespace moe
