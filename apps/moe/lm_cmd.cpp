// lm_cmd.cpp — the language-model commands: `moe data`, `moe train`, `moe eval`, `moe generate`,
// `moe inspect`.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "core/error.h"
#include "core/parallel.h"
#include "train/data.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace moe::cli {
namespace {

struct Common {
  std::string config;
  std::vector<std::string> sets;
  std::string ckpt;
  std::string corpus;
  int threads = 0;
  bool allow_nonfinite = false;
};

// The --allow-nonfinite flag of the commands that load a checkpoint.
void add_allow_nonfinite(CLI::App* cmd, bool& flag) {
  cmd->add_flag("--allow-nonfinite", flag, "Load a checkpoint even if it holds NaN or infinite weights (forensics)");
}

void apply_threads(int n) {
  if (n > 0) set_num_threads(n);
}

void print_inspect(TransformerLM& m) {
  const ModelConfig& c = m.cfg;
  std::printf("model: %d layers, d=%d, %d heads (%d kv), vocab %d, context %d, ffn %s\n", c.num_hidden_layers,
              c.hidden_size, c.num_attention_heads, c.attention().kv_heads(), c.vocab_size, c.max_position_embeddings,
              c.ffn.c_str());
  std::string sparse;  // the blocks whose FFN is the MoE or PEER layer
  for (size_t l = 0; l < m.blocks.size(); ++l)
    if (m.blocks[l].moe || m.blocks[l].peer) sparse += (sparse.empty() ? "" : ",") + std::to_string(l);
  if (c.ffn == "moe") {
    const MoeConfig mc = c.moe_layer(0);
    std::printf("moe: router %s, %d routed experts of width %d (G=%d), %d active, %d shared, in blocks %s (the others dense)\n",
                mc.router.c_str(), mc.n_experts(), mc.expert_hidden(), mc.granularity, mc.k(), mc.n_shared, sparse.c_str());
  }
  if (c.ffn == "peer") {
    const PeerConfig& p = c.peer;
    std::printf("peer: %lld experts (%d sub-keys per half), %d heads × top-%d, d_key %d, query BN %s, %s gates, %s, in blocks %s (the others dense)\n",
                static_cast<long long>(p.n_experts()), p.n_keys, p.heads, p.top_k, p.d_key, p.query_bn ? "on" : "off",
                p.score.c_str(), p.activation.c_str(), sparse.c_str());
  }
  const double total = static_cast<double>(m.num_params()), active = static_cast<double>(m.num_active_params());
  const double emb = static_cast<double>(m.num_embedding_params());
  std::printf("parameters: total %.3fM  active %.3fM  non-embedding %.3fM (active %.3fM)  embedding %.3fM\n", total / 1e6,
              active / 1e6, (total - emb) / 1e6, (active - emb) / 1e6, emb / 1e6);
  std::printf("training FLOPs per token (with routing cost, c_f = 6, c_r = 14): %.2f MFLOP\n", m.flops_per_token() / 1e6);
}

// What print_inspect prints, as JSON.
nlohmann::json inspect_json(TransformerLM& m) {
  const ModelConfig& c = m.cfg;
  nlohmann::json sparse = nlohmann::json::array();
  for (size_t l = 0; l < m.blocks.size(); ++l)
    if (m.blocks[l].moe || m.blocks[l].peer) sparse.push_back(l);
  nlohmann::json j = {{"layers", c.num_hidden_layers}, {"hidden_size", c.hidden_size}, {"heads", c.num_attention_heads},
                      {"kv_heads", c.attention().kv_heads()}, {"vocab_size", c.vocab_size},
                      {"context", c.max_position_embeddings}, {"ffn", c.ffn}, {"sparse_blocks", sparse},
                      {"params", m.num_params()}, {"active_params", m.num_active_params()},
                      {"embedding_params", m.num_embedding_params()}, {"flops_per_token", m.flops_per_token()}};
  if (c.ffn == "moe") {
    const MoeConfig mc = c.moe_layer(0);
    j["moe"] = {{"router", mc.router}, {"routed_experts", mc.n_experts()}, {"expert_width", mc.expert_hidden()},
                {"granularity", mc.granularity}, {"active_experts", mc.k()}, {"shared_experts", mc.n_shared}};
  }
  if (c.ffn == "peer")
    j["peer"] = {{"experts", c.peer.n_experts()}, {"n_keys", c.peer.n_keys}, {"heads", c.peer.heads},
                 {"top_k", c.peer.top_k}, {"d_key", c.peer.d_key}, {"query_bn", c.peer.query_bn}};
  return j;
}

}  // namespace

void add_lm(CLI::App& app) {
  static Common o;
  static int vocab = 4096;
  static bool force = false, resume = false, overwrite = false;

  auto* data = app.add_subcommand("data", "Prepare a corpus: text, held-out split, BPE tokenizer, token shards");
  static std::string data_corpus = "kjv", data_dir = "data";
  data->add_option("--corpus", data_corpus, "kjv | fortunes | c-headers | file:PATH | all");
  data->add_option("--vocab-size", vocab, "Tokenizer vocabulary")->check(CLI::Range(256, 65535));
  data->add_option("--out", data_dir, "Folder for the prepared corpora");
  data->add_flag("--force", force, "Prepare again even if present");
  data->callback([] {
    std::vector<std::string> names = data_corpus == "all" ? corpus_names() : std::vector<std::string>{data_corpus};
    for (const auto& n : names) prepare_corpus(n, data_dir, vocab, force);
  });

  auto* train = app.add_subcommand("train", "Train a model (no arguments: the default MoE model on the KJV Bible)");
  train->add_option("--config", o.config, "TOML config (see configs/)")->check(CLI::ExistingFile);
  train->add_option("--set", o.sets, "Override: section.key=value (repeatable), e.g. --set train.steps=100");
  train->add_flag("--resume", resume, "Continue the run in train.out from its newest complete checkpoint (its config, plus --set)");
  train->add_flag("--overwrite", overwrite, "Replace the run train.out already holds (its checkpoints and metrics)");
  train->add_option("--threads", o.threads, "Threads (default: all cores)")->check(CLI::PositiveNumber);
  train->callback([] {
    apply_threads(o.threads);
    // --resume without --config continues the run's own config.json, with the --set overrides on top
    // (e.g. --set train.steps=1200 to train further); a run folder without one is train_model's error.
    if (resume && overwrite) fail("--resume and --overwrite contradict each other; give one");
    RunConfig c = load_run_config(o.config, o.sets);
    if (resume && o.config.empty() && std::filesystem::exists(c.train.out + "/config.json")) {
      const RunConfig saved = read_checkpoint_config(c.train.out);
      c = load_run_config("", o.sets, &saved);
    }
    TrainSummary s = train_model(c, {.resume = resume, .overwrite = overwrite});
    std::printf("validation loss %.4f  perplexity %.2f  (%lld steps)\n", s.val_loss, s.val_ppl, static_cast<long long>(s.steps));
    std::printf("throughput %.0f tokens/s (median step)  MFU %.1f%% of the measured GEMM peak  %.0f s in all\n",
                s.tokens_per_s, 100.0 * s.mfu, s.run_seconds);
    if (!s.load_summary.empty()) std::printf("expert load: %s\n", s.load_summary.c_str());
    Tokenizer tok;
    tok.load(c.train.out + "/tokenizer.model");
    TransformerLM model(c.model, ParamInit::for_loading);
    std::printf("checkpoint: %s\n", step_dir(c.train.out, load_checkpoint(c.train.out, model, nullptr).step).c_str());
    const std::string prompt = c.train.corpus == "c-headers" ? "#include <stdio.h>\n" : "And God said";
    SampleOptions so;
    so.max_tokens = 48;
    std::vector<int32_t> ids = tok.encode(prompt);
    std::vector<int32_t> out = generate(model, ids, so);
    ids.insert(ids.end(), out.begin(), out.end());
    std::printf("sample: %s\n", tok.decode(ids).c_str());
    std::printf("checkpoint and metrics.jsonl in %s\n", c.train.out.c_str());
  });

  auto* eval = app.add_subcommand("eval", "Validation loss and perplexity of a checkpoint");
  static int eval_windows = 256;
  eval->add_option("--ckpt", o.ckpt, "Checkpoint folder (train.out of a run)")->required();
  eval->add_option("--corpus", o.corpus, "Corpus to evaluate on: kjv | fortunes | c-headers | file:PATH (default: the one it trained on)");
  static bool eval_json = false;
  eval->add_flag("--json", eval_json, "Print one JSON object: checkpoint, step, corpus, windows, val_loss, perplexity");
  eval->add_option("--windows", eval_windows, "Validation windows")->check(CLI::PositiveNumber);
  eval->add_option("--threads", o.threads, "Threads")->check(CLI::PositiveNumber);
  add_allow_nonfinite(eval, o.allow_nonfinite);
  eval->callback([] {
    apply_threads(o.threads);
    RunConfig c = read_checkpoint_config(o.ckpt);
    TransformerLM model(c.model, ParamInit::for_loading);
    const TrainState st = load_checkpoint(o.ckpt, model, nullptr, o.allow_nonfinite);
    const std::string corpus = o.corpus.empty() ? c.train.corpus : o.corpus;
    TokenShard val(checkpoint_val_shard(o.ckpt, c, corpus));
    const double loss = evaluate(model, val, c.model.max_position_embeddings, eval_windows, c.train.batch_size);
    if (eval_json) {
      const nlohmann::json j = {{"ckpt", step_dir(o.ckpt, st.step)}, {"step", st.step}, {"corpus", corpus},
                                {"windows", eval_windows}, {"val_loss", loss}, {"perplexity", std::exp(loss)}};
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    std::printf("%s on %s: validation loss %.4f  perplexity %.2f\n", o.ckpt.c_str(), corpus.c_str(), loss, std::exp(loss));
  });

  auto* gen = app.add_subcommand("generate", "Continue a prompt with a trained model");
  static std::string prompt;
  static SampleOptions so;
  static bool show_experts = false;
  gen->add_option("--ckpt", o.ckpt, "Checkpoint folder")->required();
  gen->add_option("--prompt", prompt, "Text to continue")->required();
  gen->add_option("--max-tokens", so.max_tokens, "Tokens to generate")->check(CLI::PositiveNumber);
  gen->add_option("--temperature", so.temperature, "Sampling temperature (0: greedy)")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-k", so.top_k, "Keep the k most likely tokens (0: all)")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", so.top_p, "Nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  gen->add_option("--seed", so.seed, "Sampling seed");
  gen->add_flag("--show-experts", show_experts, "Print the experts each generated token went to, per MoE layer");
  add_allow_nonfinite(gen, o.allow_nonfinite);
  gen->callback([] {
    RunConfig c = read_checkpoint_config(o.ckpt);
    TransformerLM model(c.model, ParamInit::for_loading);
    load_checkpoint(o.ckpt, model, nullptr, o.allow_nonfinite);
    Tokenizer tok;
    tok.load(o.ckpt + "/tokenizer.model");
    std::printf("%s", prompt.c_str());
    std::fflush(stdout);
    std::vector<std::string> routes;
    generate(model, tok.encode(prompt), so, [&](int32_t id, const std::vector<std::vector<int32_t>>& experts) {
      std::printf("%s", tok.token_text(id).c_str());
      std::fflush(stdout);
      if (show_experts) {
        std::string line = "'" + tok.piece(id) + "':";
        for (size_t l = 0; l < experts.size(); ++l) {
          line += " L" + std::to_string(l) + "[";
          for (size_t i = 0; i < experts[l].size(); ++i) {
            if (i) line += ",";
            line += std::to_string(experts[l][i]);
          }
          line += "]";
        }
        routes.push_back(line);
      }
    });
    std::printf("\n");
    for (const auto& r : routes) std::printf("%s\n", r.c_str());
  });

  auto* inspect = app.add_subcommand("inspect", "Parameters (total, active, embedding) and FLOPs per token of a model; "
                                                "with --routing, the routing of a checkpoint");
  static bool routing = false, train_routing = false, json = false;
  static int routing_windows = 256;
  static std::string svg;
  inspect->add_option("--config", o.config, "TOML config")->check(CLI::ExistingFile);
  inspect->add_option("--ckpt", o.ckpt, "Checkpoint folder");
  inspect->add_option("--set", o.sets, "Override: section.key=value");
  inspect->add_flag("--routing", routing, "Router metrics per MoE layer on held-out text (needs --ckpt), with an SVG chart; for a PEER model, expert usage and unevenness");
  inspect->add_option("--corpus", o.corpus, "With --routing: corpus to route (default: the one it trained on)");
  inspect->add_option("--windows", routing_windows, "With --routing: validation windows")->check(CLI::PositiveNumber);
  inspect->add_flag("--train-routing", train_routing, "With --routing: route as in training (noise, sampling, balanced assignment)");
  inspect->add_option("--svg", svg, "With --routing: chart path (default: CKPT/routing.svg)");
  inspect->add_flag("--json", json, "Print JSON (the model's sizes; with --routing, the routing report)");
  inspect->add_option("--threads", o.threads, "Threads")->check(CLI::PositiveNumber);
  add_allow_nonfinite(inspect, o.allow_nonfinite);
  inspect->callback([] {
    apply_threads(o.threads);
    if (routing) {
      if (o.ckpt.empty()) fail("inspect --routing needs --ckpt DIR (a trained checkpoint folder)");
      inspect_routing(o.ckpt, o.corpus, routing_windows, train_routing, svg, json, o.allow_nonfinite);
      return;
    }
    RunConfig c = o.ckpt.empty() ? load_run_config(o.config, o.sets) : read_checkpoint_config(o.ckpt);
    TransformerLM model(c.model, ParamInit::for_loading);  // counts only: the tables need no draw
    if (!o.ckpt.empty()) load_checkpoint(o.ckpt, model, nullptr, o.allow_nonfinite);
    if (json) {
      std::printf("%s\n", inspect_json(model).dump(1).c_str());
      return;
    }
    print_inspect(model);
  });
}

}  // namespace moe::cli
