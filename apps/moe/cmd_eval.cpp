// cmd_eval.cpp — `moe eval`: validation loss and perplexity of a checkpoint on a corpus.
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "eval/evaluate.h"

namespace moe::cli {

void add_eval(CLI::App& app) {
  static std::string ckpt, corpus;
  static int windows = 256, threads = 0;
  static bool json = false, allow_nonfinite = false;
  auto* cmd = app.add_subcommand("eval", "Validation loss and perplexity of a checkpoint");
  cmd->add_option("--ckpt", ckpt, "Checkpoint folder (train.out of a run)")->required();
  cmd->add_option("--corpus", corpus, "Corpus to evaluate on: " + corpus_choices() + " (default: the one it trained on)");
  cmd->add_flag("--json", json, "Print one JSON object: checkpoint, step, corpus, windows, val_loss, perplexity");
  cmd->add_option("--windows", windows, "Validation windows")->check(CLI::PositiveNumber);
  add_threads(cmd, threads);
  add_allow_nonfinite(cmd, allow_nonfinite);
  cmd->callback([] {
    apply_threads(threads);
    LoadedRun run = load_run(ckpt, allow_nonfinite);
    const RunConfig& c = run.cfg;
    const std::string name = corpus.empty() ? c.train.corpus : corpus;
    TokenShard val(checkpoint_val_shard(ckpt, c, name));
    const double loss = evaluate(*run.model, val, c.model.max_position_embeddings, windows, c.train.batch_size);
    if (json) {
      const nlohmann::json j = {{"ckpt", step_dir(ckpt, run.state.step)}, {"step", run.state.step}, {"corpus", name},
                                {"windows", windows}, {"val_loss", loss}, {"perplexity", std::exp(loss)}};
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    std::printf("%s on %s: validation loss %.4f  perplexity %.2f\n", ckpt.c_str(), name.c_str(), loss, std::exp(loss));
  });
}

}  // namespace moe::cli
