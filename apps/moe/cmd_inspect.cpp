// cmd_inspect.cpp — `moe inspect`: a model's sizes (total, active and embedding parameters, FLOPs per
// token); with --routing, the metrics of a checkpoint's sparse layers on held-out text (router load
// and balance for MoE, expert usage for PEER), as text or JSON, with an SVG chart of the expert load.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "core/error.h"
#include "core/files.h"
#include "eval/charts.h"
#include "eval/evaluate.h"

namespace moe::cli {
namespace {

// frozen: the parameters a checkpoint's freeze mask holds fixed (`moe expand`); -1 without a checkpoint.
void print_sizes(const TransformerLM& m, int64_t frozen) {
  const ModelConfig& c = m.cfg;
  std::printf("model: %d layers, d=%d, %d heads (%d kv), vocab %d, context %d, ffn %s\n", c.num_hidden_layers,
              c.hidden_size, c.num_attention_heads, c.attention().kv_heads(), c.vocab_size, c.context(),
              name_of(c.ffn));
  if (const std::string ffn = c.describe_ffn(); !ffn.empty()) std::printf("%s\n", ffn.c_str());
  const double total = static_cast<double>(m.num_params()), active = static_cast<double>(m.num_active_params());
  const double emb = static_cast<double>(m.num_embedding_params());
  std::printf("parameters: total %.3fM  active %.3fM  non-embedding %.3fM (active %.3fM)  embedding %.3fM\n", total / 1e6,
              active / 1e6, (total - emb) / 1e6, (active - emb) / 1e6, emb / 1e6);
  std::printf("training FLOPs per token (with routing cost, c_f = 6, c_r = 14): %.2f MFLOP\n", m.flops_per_token() / 1e6);
  if (frozen >= 0)
    std::printf("training: frozen %.3fM  trainable %.3fM%s\n", static_cast<double>(frozen) / 1e6, (total - static_cast<double>(frozen)) / 1e6,
                frozen > 0 ? " (the checkpoint's freeze mask, from `moe expand`)" : "");
}

nlohmann::json sizes_json(const TransformerLM& m, int64_t frozen) {
  const ModelConfig& c = m.cfg;
  nlohmann::json j = {{"layers", c.num_hidden_layers}, {"hidden_size", c.hidden_size}, {"heads", c.num_attention_heads},
                      {"kv_heads", c.attention().kv_heads()}, {"vocab_size", c.vocab_size},
                      {"context", c.context()}, {"ffn", name_of(c.ffn)}, {"sparse_blocks", c.sparse_blocks()},
                      {"params", m.num_params()}, {"active_params", m.num_active_params()},
                      {"embedding_params", m.num_embedding_params()}, {"flops_per_token", m.flops_per_token()}};
  j.update(c.ffn_json());
  if (frozen >= 0) j["frozen_params"] = frozen, j["trainable_params"] = m.num_params() - frozen;
  return j;
}

struct RoutingOptions {
  std::string corpus, svg;
  int windows = 256;
  bool train_routing = false, json = false, allow_nonfinite = false;
};

void inspect_routing(const std::string& ckpt, const RoutingOptions& o) {
  LoadedRun run = load_run(ckpt, o.allow_nonfinite);
  const RunConfig& c = run.cfg;
  if (c.model.sparse_blocks().empty())
    fail(ckpt + " is a dense model (ffn = \"" + name_of(c.model.ffn) + "\"): it has no routing to inspect");
  const std::string corpus = o.corpus.empty() ? c.train.corpus : o.corpus;
  TokenShard val(checkpoint_val_shard(ckpt, c, corpus));
  std::vector<LayerStats> stats;
  const double loss = sparse_report(*run.model, val, c.model.max_position_embeddings, o.windows, c.train.batch_size,
                                    o.train_routing, stats);
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerStats& s : stats) {
    nlohmann::json j = {{"layer", s.layer}};
    j.update(s.stats->report());
    layers.push_back(j);
  }
  const char* mode = o.train_routing ? "training" : "eval";
  nlohmann::json out = {{"val_loss", loss}, {"layers", layers}};
  const std::string svg = routing_svg(layers, ckpt + ": expert load on " + corpus + " (" + c.model.ffn_label() + ", " + mode +
                                                  " routing)");
  const std::string svg_path = o.svg.empty() ? ckpt + "/routing.svg" : o.svg;
  const bool charted = !svg.empty();  // MoE layers have a load to draw
  if (charted) {
    write_file_atomic(svg_path, svg);
    out["svg"] = svg_path;
  }
  if (o.json) {
    std::printf("%s\n", out.dump(1).c_str());
    return;
  }
  std::printf("%s: %s, %s routing, %d validation windows: loss %.4f\n", ckpt.c_str(), c.model.ffn_label().c_str(), mode,
              o.windows, loss);
  for (const LayerStats& s : stats) std::printf("layer %d: %s", s.layer, s.stats->describe().c_str());
  if (charted) std::printf("chart: %s\n", svg_path.c_str());
}

}  // namespace

void add_inspect(CLI::App& app) {
  static std::string config, ckpt;
  static std::vector<std::string> sets;
  static RoutingOptions ro;
  static bool routing = false;
  static int threads = 0;
  auto* cmd = app.add_subcommand("inspect", "Parameters (total, active, embedding) and FLOPs per token of a model; "
                                            "with --routing, the sparse layers of a checkpoint on held-out text");
  cmd->add_option("--config", config, "TOML config")->check(CLI::ExistingFile);
  cmd->add_option("--ckpt", ckpt, "Checkpoint folder");
  cmd->add_option("--set", sets, "Override: section.key=value");
  cmd->add_flag("--routing", routing,
                "Metrics per sparse layer on held-out text (needs --ckpt): router load and balance with an SVG chart "
                "for MoE, expert usage and unevenness for PEER");
  cmd->add_option("--corpus", ro.corpus, "With --routing: corpus to route, " + corpus_choices() + " (default: the one it trained on)");
  cmd->add_option("--windows", ro.windows, "With --routing: validation windows")->check(CLI::PositiveNumber);
  cmd->add_flag("--train-routing", ro.train_routing,
                "With --routing: route as in training (noise, sampling, balanced assignment)");
  cmd->add_option("--svg", ro.svg, "With --routing: chart path (default: CKPT/routing.svg)");
  cmd->add_flag("--json", ro.json, "Print JSON (the model's sizes; with --routing, the routing report)");
  add_threads(cmd, threads);
  add_allow_nonfinite(cmd, ro.allow_nonfinite);
  cmd->callback([] {
    apply_threads(threads);
    if (routing) {
      if (ckpt.empty()) fail("inspect --routing needs --ckpt DIR (a trained checkpoint folder)");
      inspect_routing(ckpt, ro);
      return;
    }
    std::unique_ptr<TransformerLM> model;
    int64_t frozen = -1;
    if (ckpt.empty()) {
      // Counts only: a model built for loading skips drawing PEER's tables.
      model = std::make_unique<TransformerLM>(load_run_config(config, sets).model, ParamInit::for_loading);
    } else {
      LoadedRun run = load_run(ckpt, ro.allow_nonfinite);
      model = std::move(run.model);
      frozen = frozen_param_count(run.state.frozen, model->params());
    }
    if (ro.json) {
      std::printf("%s\n", sizes_json(*model, frozen).dump(1).c_str());
      return;
    }
    print_sizes(*model, frozen);
  });
}

}  // namespace moe::cli
