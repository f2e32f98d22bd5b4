// cmd_train.cpp — `moe train`: train a model (no arguments: the default MoE model on the KJV Bible),
// then show the result: validation loss, throughput, the sparse layers' balance and a sample.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "core/error.h"
#include "data/corpus.h"
#include "data/tokenizer.h"
#include "dist/world.h"
#include "infer/generate.h"
#include "train/trainer.h"

namespace moe::cli {

void add_train(CLI::App& app) {
  static std::string config;
  static std::vector<std::string> sets;
  static bool resume = false, overwrite = false, profile = false;
  static int threads = 0;
  static std::string init_from, distill_from;
  static float distill_weight = -1.f;
  auto* cmd = app.add_subcommand("train", "Train a model (no arguments: the default MoE model on the KJV Bible)");
  cmd->add_option("--config", config, "TOML config (see configs/; `moe keys` lists every key)")->check(CLI::ExistingFile);
  cmd->add_option("--set", sets, "Override: section.key=value (repeatable), e.g. --set train.steps=100");
  cmd->add_flag("--resume", resume, "Continue the run in train.out from its newest complete checkpoint (its config, plus --set)");
  cmd->add_flag("--overwrite", overwrite, "Replace the run train.out already holds (its checkpoints and metrics)");
  cmd->add_flag("--profile", profile, "Time every phase of each step: profile_ms in metrics.jsonl and a table at the end "
                                      "(median ms per step, share, GFLOP/s of the GEMM phases)");
  cmd->add_option("--init-from", init_from, "Start from the newest checkpoint of this run folder: its model, weights, AdamW "
                                            "moments and freeze mask (= --set train.init_from=DIR)");
  cmd->add_option("--distill-from", distill_from, "Add lambda * KL(p_teacher || p) against this run's frozen model on the same "
                                                  "batches (= --set train.distill_from=DIR)");
  cmd->add_option("--distill-weight", distill_weight, "lambda of the distillation term (= --set train.distill_weight=X; default 1)")
      ->check(CLI::NonNegativeNumber);
  add_threads(cmd, threads);
  cmd->callback([] {
    apply_threads(threads);
    // --resume without --config continues the run's own config.json, with the --set overrides on top
    // (e.g. --set train.steps=1200 to train further); a run folder without one is train_model's error.
    auto settings = [] {
      if (resume && overwrite) fail("--resume and --overwrite contradict each other; give one");
      RunConfig c = load_run_config(config, sets);
      if (resume && config.empty() && std::filesystem::exists(c.train.out + "/config.json")) {
        const RunConfig saved = read_checkpoint_config(c.train.out);
        c = load_run_config("", sets, &saved);
      }
      if (!init_from.empty()) c.train.init_from = init_from;
      if (!distill_from.empty()) c.train.distill_from = distill_from;
      if (distill_weight >= 0.f) c.train.distill_weight = distill_weight;
      c.train.validate();
      return c;
    };
    // Every rank of a job reads the same settings: an error in them is the job's, said once by rank 0.
    RunConfig c;
    try {
      c = settings();
    } catch (const Error& e) {
      if (distributed(world()) && !dynamic_cast<const JobError*>(&e)) fail_job(e.what());
      throw;
    }
    Comm* ranks = world();  // mpirun -np P: the job's P ranks (docs/DISTRIBUTED.md); null: one process
    if (!ranks && c.train.expert_parallel > 1 && !built_with_mpi())
      fail("train.expert_parallel = " + std::to_string(c.train.expert_parallel) + " needs MPI, and this moe was built "
           "without it: install libopenmpi-dev (scripts/setup.sh does) and build again, then run it under mpirun -np " +
           std::to_string(c.train.expert_parallel));
    const TrainSummary s = train_model(c, {.resume = resume, .overwrite = overwrite, .comm = ranks, .profile = profile});
    if (ranks && ranks->rank() != 0) return;  // rank 0 shows the result
    std::printf("validation loss %.4f  perplexity %.2f  (%lld steps)\n", s.val_loss, s.val_ppl, static_cast<long long>(s.steps));
    std::printf("throughput %.0f tokens/s (median step)  MFU %.1f%% of the measured GEMM peak of its precision  %.0f s in all\n",
                s.tokens_per_s, 100.0 * s.mfu, s.run_seconds);
    if (!s.load_summary.empty()) std::printf("expert load: %s\n", s.load_summary.c_str());
    Tokenizer tok;
    tok.load(c.train.out + "/tokenizer.model");
    LoadedRun run = load_run(c.train.out, false);
    std::printf("checkpoint: %s\n", step_dir(c.train.out, run.state.step).c_str());
    const std::string prompt = corpus_prompt(c.train.corpus);
    SampleOptions so;
    so.max_tokens = 48;
    std::vector<int32_t> ids = tok.encode(prompt);
    const std::vector<int32_t> out = generate(*run.model, ids, so);
    ids.insert(ids.end(), out.begin(), out.end());
    std::printf("sample: %s\n", tok.decode(ids).c_str());
    std::printf("checkpoint and metrics.jsonl in %s\n", c.train.out.c_str());
  });
}

}  // namespace moe::cli
