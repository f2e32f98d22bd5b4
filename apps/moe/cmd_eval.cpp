// cmd_eval.cpp — `moe eval`: validation loss and perplexity of a checkpoint on a corpus, or with --ids
// the mean next-token cross-entropy of given token ids (to compare with another implementation).
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "eval/evaluate.h"
#include "interop/scoring.h"

namespace moe::cli {

void add_eval(CLI::App& app) {
  static std::string ckpt, corpus, ids;
  static int windows = 256, threads = 0;
  static bool json = false, allow_nonfinite = false;
  static WeightFormat weights = WeightFormat::fp32;
  static Precision kv_cache = Precision::fp32;
  auto* cmd = app.add_subcommand("eval", "Validation loss and perplexity of a checkpoint");
  cmd->add_option("--ckpt", ckpt, "Checkpoint folder (train.out of a run)")->required();
  cmd->add_option("--corpus", corpus, "Corpus to evaluate on: " + corpus_choices() + " (default: the one it trained on)");
  cmd->add_option("--ids", ids, "Score these token ids instead (whitespace-separated integers, one sequence per line)")
      ->excludes("--corpus");
  cmd->add_flag("--json", json, "Print one JSON object: checkpoint, step, corpus, windows, val_loss, perplexity "
                                "(with --ids: ids, sequences, predictions, mean_ce, perplexity)");
  cmd->add_option("--windows", windows, "Validation windows")->check(CLI::PositiveNumber);
  add_enum_option(cmd, "--weights", weights,
                  "Evaluate with the weight matrices packed in this format, through the products `moe generate "
                  "--weights` decodes with (q8_0: on activations rounded to int8 blocks): the perplexity cost of "
                  "bf16 or q8_0. fp32: as trained (a bf16 model's GEMMs stay bf16)");
  add_enum_option(cmd, "--kv-cache", kv_cache,
                  "Evaluate with every block's keys and values rounded as this KV cache would hold them (what "
                  "`moe generate --kv-cache` decodes with): the perplexity cost of a bf16 cache");
  add_threads(cmd, threads);
  add_allow_nonfinite(cmd, allow_nonfinite);
  cmd->callback([] {
    apply_threads(threads);
    LoadedRun run = load_run(ckpt, allow_nonfinite);
    if (weights != WeightFormat::fp32) run.model->pack_weights(weights);  // fp32: the model as it is
    run.model->set_kv_cache(kv_cache);
    const RunConfig& c = run.cfg;
    if (!ids.empty()) {
      const IdsScore s = score_ids(*run.model, read_token_ids(ids, c.model.vocab_size));
      if (json) {
        const nlohmann::json j = {{"ckpt", step_dir(ckpt, run.state.step)}, {"ids", ids}, {"weights", name_of(weights)},
                                  {"kv_cache", name_of(kv_cache)}, {"sequences", s.sequences},
                                  {"predictions", s.predictions}, {"mean_ce", s.mean_ce}, {"perplexity", std::exp(s.mean_ce)}};
        std::printf("%s\n", j.dump().c_str());
        return;
      }
      std::printf("%s on %s: mean next-token cross-entropy %.17g over %lld predictions in %d sequence(s)  perplexity %.6g\n",
                  ckpt.c_str(), ids.c_str(), s.mean_ce, static_cast<long long>(s.predictions), s.sequences, std::exp(s.mean_ce));
      return;
    }
    const std::string name = corpus.empty() ? c.train.corpus : corpus;
    TokenShard val(checkpoint_val_shard(ckpt, c, name));
    const double loss = evaluate(*run.model, val, c.model.max_position_embeddings, windows, c.train.batch_size);
    if (json) {
      const nlohmann::json j = {{"ckpt", step_dir(ckpt, run.state.step)}, {"step", run.state.step}, {"corpus", name},
                                {"windows", windows}, {"weights", name_of(weights)},
                                {"kv_cache", name_of(kv_cache)}, {"val_loss", loss}, {"perplexity", std::exp(loss)}};
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    std::string how;
    if (weights != WeightFormat::fp32) how += std::string("  (weights ") + name_of(weights) + ")";
    if (kv_cache != Precision::fp32) how += std::string("  (KV cache ") + name_of(kv_cache) + ")";
    std::printf("%s on %s: validation loss %.4f  perplexity %.2f%s\n", ckpt.c_str(), name.c_str(), loss, std::exp(loss), how.c_str());
  });
}

}  // namespace moe::cli
