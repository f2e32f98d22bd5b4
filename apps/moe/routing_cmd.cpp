// routing_cmd.cpp — routing measurements of trained checkpoints: `moe inspect --routing` (per MoE layer,
// as text and an SVG chart; per PEER layer, expert usage and unevenness) and `moe compare` (one markdown row per run, for the router experiments).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "train/trainer.h"

namespace moe::cli {
namespace {

struct Measured {
  RunConfig cfg;
  double val_loss = 0.0;
  nlohmann::json layers = nlohmann::json::array();  // RoutingStats::to_json() + "layer"
};

Measured measure(const std::string& ckpt, const std::string& corpus_opt, int windows, bool train_routing,
                 bool allow_nonfinite = false) {
  Measured m;
  m.cfg = read_checkpoint_config(ckpt);
  MOE_CHECK(m.cfg.model.ffn == "moe", ckpt + " is a dense model (ffn = \"" + m.cfg.model.ffn + "\"): it has no routing to inspect");
  TransformerLM model(m.cfg.model, ParamInit::for_loading);
  load_checkpoint(ckpt, model, nullptr, allow_nonfinite);
  const std::string corpus = corpus_opt.empty() ? m.cfg.train.corpus : corpus_opt;
  TokenShard val(checkpoint_val_shard(ckpt, m.cfg, corpus));
  std::vector<int> layers;
  std::vector<RoutingStats> stats;
  m.val_loss = routing_report(model, val, m.cfg.model.max_position_embeddings, windows, m.cfg.train.batch_size,
                              train_routing, layers, stats);
  for (size_t i = 0; i < layers.size(); ++i) {
    nlohmann::json j = {{"layer", layers[i]}};
    j.update(stats[i].to_json());
    m.layers.push_back(j);
  }
  return m;
}

double layer_mean(const nlohmann::json& layers, const char* key) {
  double s = 0.0;
  for (const auto& l : layers) {  // a layer without the number (a damaged line) makes the mean NaN
    const auto it = l.is_object() ? l.find(key) : l.end();
    s += it != l.end() && it->is_number() ? it->get<double>() : std::nan("");
  }
  return layers.empty() ? 0.0 : s / static_cast<double>(layers.size());
}

// Training-time routing from metrics.jsonl: the mean over the last `last` steps and the MoE layers.
nlohmann::json training_means(const std::string& ckpt, int last) {
  std::ifstream in(ckpt + "/metrics.jsonl");
  if (!in) fail("no metrics.jsonl in " + ckpt + " (is it the out folder of `moe train`?)");
  std::vector<nlohmann::json> rows;
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    // Lines of another shape (a damaged file) are skipped.
    if (!j.is_discarded() && j.is_object() && j.contains("moe") && j["moe"].is_array() && !j["moe"].empty() &&
        j["moe"][0].is_object())
      rows.push_back(j);
  }
  nlohmann::json out = nlohmann::json::object();
  const size_t from = rows.size() > static_cast<size_t>(last) ? rows.size() - static_cast<size_t>(last) : 0;
  for (const char* key : {"cv", "max_mean", "cv_importance", "dropped"}) {
    double s = 0.0;
    size_t n = 0;
    for (size_t i = from; i < rows.size(); ++i) {
      if (!rows[i]["moe"][0].contains(key) || !rows[i]["moe"][0][key].is_number()) continue;
      s += layer_mean(rows[i]["moe"], key);
      ++n;
    }
    out[key] = n ? s / static_cast<double>(n) : std::nan("");
  }
  return out;
}

}  // namespace

void add_routing(CLI::App& app) {
  auto* cmp = app.add_subcommand("compare", "One markdown row per checkpoint: validation loss and routing balance");
  static std::vector<std::string> runs;
  static std::string corpus;
  static int windows = 256, last = 50;
  cmp->add_option("runs", runs, "Checkpoint folders (train.out of each run)")->required()->check(CLI::ExistingDirectory);
  cmp->add_option("--corpus", corpus, "Corpus to measure on (default: each run's own)");
  cmp->add_option("--windows", windows, "Validation windows")->check(CLI::PositiveNumber);
  cmp->add_option("--last", last, "Training steps averaged for the training-time balance")->check(CLI::PositiveNumber);
  cmp->callback([] {
    std::printf("| run | router | val loss | train max/mean | train CV | train CV(importance) | eval max/mean | eval CV | "
                "eval entropy | consecutive same (random) |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& run : runs) {
      const RunConfig c = read_checkpoint_config(run);
      if (c.model.ffn != "moe") {
        TransformerLM model(c.model, ParamInit::for_loading);
        load_checkpoint(run, model, nullptr);
        TokenShard val(checkpoint_val_shard(run, c, corpus.empty() ? c.train.corpus : corpus));
        const double loss = evaluate(model, val, c.model.max_position_embeddings, windows, c.train.batch_size);
        std::printf("| %s | dense | %.4f | | | | | | | |\n", run.c_str(), loss);
        continue;
      }
      const Measured m = measure(run, corpus, windows, false);
      const nlohmann::json tr = training_means(run, last);
      auto num = [](double v, int digits) {  // "–" for a metric the run did not log
        if (!std::isfinite(v)) return std::string("–");
        char b[32];
        std::snprintf(b, sizeof b, "%.*f", digits, v);
        return std::string(b);
      };
      std::printf("| %s | %s | %.4f | %s | %s | %s | %.2f | %.3f | %.3f | %.3f (%.3f) |\n", run.c_str(),
                  m.cfg.model.moe.router.c_str(), m.val_loss, num(tr["max_mean"].get<double>(), 2).c_str(),
                  num(tr["cv"].get<double>(), 3).c_str(), num(tr["cv_importance"].get<double>(), 3).c_str(),
                  layer_mean(m.layers, "max_mean"), layer_mean(m.layers, "cv"),
                  layer_mean(m.layers, "entropy"), layer_mean(m.layers, "consecutive_same"),
                  layer_mean(m.layers, "random_same"));
      std::fflush(stdout);
    }
  });
}

// PEER layers: the share of experts retrieved on held-out text and the unevenness of their use.
void inspect_peer(const std::string& ckpt, const RunConfig& c, const std::string& corpus_opt, int windows, bool json,
                  bool allow_nonfinite) {
  TransformerLM model(c.model, ParamInit::for_loading);
  load_checkpoint(ckpt, model, nullptr, allow_nonfinite);
  TokenShard val(checkpoint_val_shard(ckpt, c, corpus_opt.empty() ? c.train.corpus : corpus_opt));
  std::vector<int> layers;
  std::vector<PeerStats> stats;
  const double loss = peer_report(model, val, c.model.max_position_embeddings, windows, c.train.batch_size, layers, stats);
  nlohmann::json out = {{"val_loss", loss}, {"layers", nlohmann::json::array()}};
  for (size_t i = 0; i < layers.size(); ++i) {
    nlohmann::json j = {{"layer", layers[i]}, {"query_bn", c.model.peer.query_bn}};
    j.update(stats[i].to_json());
    j["cumulative_share"] = stats[i].cumulative_share(64);
    for (double f : {0.001, 0.01, 0.1}) j[f == 0.001 ? "top_0.1%" : f == 0.01 ? "top_1%" : "top_10%"] = stats[i].top_share(f);
    out["layers"].push_back(j);
  }
  if (json) {
    std::printf("%s\n", out.dump(1).c_str());
    return;
  }
  std::printf("%s: PEER, %d validation windows: loss %.4f\n", ckpt.c_str(), windows, loss);
  for (const auto& L : out["layers"]) {
    std::printf("layer %d: %lld experts, %lld retrievals: usage %.1f%%  unevenness %.3f (uniform 0, max log N = %.2f)\n",
                L["layer"].get<int>(), L["experts"].get<long long>(), L["pairs"].get<long long>(),
                100.0 * L["usage"].get<double>(), L["unevenness"].get<double>(),
                std::log(L["experts"].get<double>()));
    std::printf("  share of the gate held by the most used 0.1%% / 1%% / 10%% of the experts: %.0f%% / %.0f%% / %.0f%%\n",
                100.0 * L["top_0.1%"].get<double>(), 100.0 * L["top_1%"].get<double>(), 100.0 * L["top_10%"].get<double>());
  }
}

void inspect_routing(const std::string& ckpt, const std::string& corpus, int windows, bool train_routing,
                     const std::string& svg_path, bool json, bool allow_nonfinite) {
  if (const RunConfig c = read_checkpoint_config(ckpt); c.model.ffn == "peer") {
    inspect_peer(ckpt, c, corpus, windows, json, allow_nonfinite);
    return;
  }
  const Measured m = measure(ckpt, corpus, windows, train_routing, allow_nonfinite);
  const std::string svg = svg_path.empty() ? ckpt + "/routing.svg" : svg_path;
  const std::string title = ckpt + ": expert load on " + (corpus.empty() ? m.cfg.train.corpus : corpus) + " (" +
                            m.cfg.model.moe.router + ", " + (train_routing ? "training" : "eval") + " routing)";
  write_file_atomic(svg, routing_svg(m.layers, title));
  if (json) {
    std::printf("%s\n", nlohmann::json({{"val_loss", m.val_loss}, {"layers", m.layers}, {"svg", svg}}).dump(1).c_str());
    return;
  }
  std::printf("%s: router %s, %s routing, %d validation windows: loss %.4f\n", ckpt.c_str(), m.cfg.model.moe.router.c_str(),
              train_routing ? "training" : "eval", windows, m.val_loss);
  for (const auto& L : m.layers) {
    const std::vector<double> load = L["load"].get<std::vector<double>>();
    const double E = static_cast<double>(load.size());
    std::printf("layer %d: CV %.3f  max/mean %.2f  CV(importance) %.3f  dropped %.1f%%  unrouted %.1f%%  experts used %.0f%%\n"
                "         entropy %.3f (uniform %.3f)  consecutive same %.3f (random %.3f)\n",
                L["layer"].get<int>(), L["cv"].get<double>(), L["max_mean"].get<double>(), L["cv_importance"].get<double>(),
                100.0 * L["dropped"].get<double>(), 100.0 * L["unrouted"].get<double>(), 100.0 * L["experts_used"].get<double>(),
                L["entropy"].get<double>(), std::log(E), L["consecutive_same"].get<double>(), L["random_same"].get<double>());
    double mx = 0.0;
    for (double v : load) mx = std::max(mx, v);
    if (load.size() <= 64)
      for (size_t e = 0; e < load.size(); ++e) {
        const int bar = mx > 0.0 ? static_cast<int>(40.0 * load[e] / mx + 0.5) : 0;
        std::printf("  %3zu %5.1f%% %s\n", e, 100.0 * load[e], std::string(static_cast<size_t>(bar), '#').c_str());
      }
  }
  std::printf("chart: %s\n", svg.c_str());
}

}  // namespace moe::cli
