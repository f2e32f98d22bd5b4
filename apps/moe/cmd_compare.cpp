// cmd_compare.cpp — `moe compare`: one markdown row per run with its validation loss and the balance
// of its sparse layers, in training (from metrics.jsonl) and on held-out text (for the router
// experiments of docs/RESULTS.md).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "core/error.h"
#include "eval/evaluate.h"

namespace moe::cli {
namespace {

// The mean of `key` over the layer objects that have it; NaN when none has it or one holds no number
// there (a damaged line).
double layer_mean(const std::vector<nlohmann::json>& layers, const char* key) {
  double s = 0.0;
  size_t n = 0;
  for (const auto& l : layers) {
    const auto it = l.find(key);
    if (it == l.end()) continue;
    s += it->is_number() ? it->get<double>() : std::nan("");
    ++n;
  }
  return n ? s / static_cast<double>(n) : std::nan("");
}

// The per-layer metric objects of one metrics.jsonl line, or of a report: every object with a
// "layer" in the line's lists (of any FFN kind).
std::vector<nlohmann::json> layer_objects(const nlohmann::json& line) {
  std::vector<nlohmann::json> out;
  for (const auto& [key, v] : line.items())
    if (v.is_array())
      for (const auto& l : v)
        if (l.is_object() && l.contains("layer")) out.push_back(l);
  return out;
}

// Training-time balance from metrics.jsonl: for each key, the mean over the last `last` steps that
// logged it of its mean over the layers.
nlohmann::json training_means(const std::string& run, int last) {
  std::ifstream in(run + "/metrics.jsonl");
  if (!in) fail("no metrics.jsonl in " + run + " (is it the out folder of `moe train`?)");
  std::vector<std::vector<nlohmann::json>> rows;
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;  // a damaged line is skipped
    std::vector<nlohmann::json> layers = layer_objects(j);
    if (!layers.empty()) rows.push_back(std::move(layers));
  }
  nlohmann::json out = nlohmann::json::object();
  const size_t from = rows.size() > static_cast<size_t>(last) ? rows.size() - static_cast<size_t>(last) : 0;
  for (const char* key : {"cv", "max_mean", "cv_importance", "dropped"}) {
    double s = 0.0;
    size_t n = 0;
    for (size_t i = from; i < rows.size(); ++i) {
      const double v = layer_mean(rows[i], key);
      if (std::isnan(v)) continue;
      s += v;
      ++n;
    }
    out[key] = n ? s / static_cast<double>(n) : std::nan("");
  }
  return out;
}

std::string cell(double v, int digits) {  // "–" for a metric the run did not log
  if (!std::isfinite(v)) return "–";
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

}  // namespace

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
    std::printf("| run | ffn | val loss | train max/mean | train CV | train CV(importance) | eval max/mean | eval CV | "
                "eval entropy | consecutive same (random) |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (const std::string& run : runs) {
      LoadedRun r = load_run(run, false);
      TokenShard val(checkpoint_val_shard(run, r.cfg, corpus.empty() ? r.cfg.train.corpus : corpus));
      std::vector<LayerStats> stats;
      const double loss = sparse_report(*r.model, val, r.cfg.model.max_position_embeddings, windows,
                                        r.cfg.train.batch_size, false, stats);
      if (stats.empty()) {  // a dense model: no balance to show
        std::printf("| %s | %s | %.4f | | | | | | | |\n", run.c_str(), r.cfg.model.ffn_label().c_str(), loss);
        continue;
      }
      std::vector<nlohmann::json> eval;
      for (const LayerStats& s : stats) eval.push_back(s.stats->to_json());
      const nlohmann::json tr = training_means(run, last);
      std::printf("| %s | %s | %.4f | %s | %s | %s | %s | %s | %s | %s (%s) |\n", run.c_str(),
                  r.cfg.model.ffn_label().c_str(), loss, cell(tr["max_mean"].get<double>(), 2).c_str(),
                  cell(tr["cv"].get<double>(), 3).c_str(), cell(tr["cv_importance"].get<double>(), 3).c_str(),
                  cell(layer_mean(eval, "max_mean"), 2).c_str(), cell(layer_mean(eval, "cv"), 3).c_str(),
                  cell(layer_mean(eval, "entropy"), 3).c_str(), cell(layer_mean(eval, "consecutive_same"), 3).c_str(),
                  cell(layer_mean(eval, "random_same"), 3).c_str());
      std::fflush(stdout);
    }
  });
}

}  // namespace moe::cli
