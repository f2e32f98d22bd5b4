// run_config.h — the configuration of a training run: the model (model/config.h: its own keys, the
// MoE layer's and the PEER layer's, Hugging Face names where they exist) and the training settings
// below, read from TOML ([model], [model.peer], [train]) with `--set section.key=value` overrides,
// written to and read from JSON (config.json of a run). Every key, its type, default and meaning:
// `moe keys`. Each struct lists its fields once (visit_fields); the readers and writers are generated
// from those lists. Unknown keys and wrong types are errors that name the key: integers must be whole
// numbers within their type's range, floats finite (8.9 or 4294967552 for an int is an error, never a
// silent truncation or wrap), enums one of their names.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"

namespace moe {

struct TrainConfig {
  std::string corpus = "kjv";
  std::string data_dir = "data";
  std::string out = "runs/default";
  int batch_size = 16;
  int expert_parallel = 1;  // ranks of the job (mpirun -np): experts and the batch split among them
  bool overlap_grad_sync = false;  // sum a block's gradients across ranks while the backward goes on
  int steps = 600;
  int grad_accum = 1;
  float lr = 3e-3f;
  float min_lr_ratio = 0.1f;
  int warmup_steps = 30;
  float weight_decay = 0.1f;
  float beta1 = 0.9f, beta2 = 0.95f;
  float grad_clip = 1.0f;
  int eval_every = 100;
  int eval_windows = 64;
  int save_every = 0;   // 0: only at the end
  int stop_after = 0;   // stop (with a checkpoint) after this step, keeping the schedule of `steps`; 0: run to the end
  int keep_checkpoints = 2;   // complete checkpoints kept in the run folder, newest first (0: all)
  // Bad steps: a non-finite loss or gradient norm, or a loss above spike_factor × the running mean
  // of the good steps' losses (0: no spike rule). A bad step's update is skipped; after
  // max_bad_steps in a row training stops with an error, the last good checkpoint kept.
  int max_bad_steps = 5;
  float spike_factor = 3.f;
  uint64_t seed = 1;
  // Starting point and teacher (docs/MECHANISMS.md §6).
  std::string init_from;       // a run folder: start from its newest checkpoint (weights, AdamW moments, freeze mask)
  std::string tokenizer;       // a sentencepiece model to encode the corpus with ("": the corpus's own)
  std::string distill_from;    // a run folder: its model is the frozen teacher of the distillation term
  float distill_weight = 1.f;  // λ of λ·KL(p_teacher ‖ p)

  template <class Self, class V>
  static void visit_fields(Self& c, V&& v) {
    v("corpus", c.corpus, "kjv | fortunes | c-headers | pydoc | linux | mix | file:PATH");
    v("data_dir", c.data_dir, "folder of the prepared corpora");
    v("out", c.out, "run folder: config, metrics, checkpoints");
    v("batch_size", c.batch_size, "sequences per micro-batch of the whole job (each of P ranks takes batch_size/P)");
    v("expert_parallel", c.expert_parallel, "ranks P of an `mpirun -np P` job: each holds 1/P of every layer's experts");
    v("overlap_grad_sync", c.overlap_grad_sync, "with P > 1: start summing each block's gradients as soon as its backward is done (pays across machines, not within one)");
    v("steps", c.steps, "optimizer steps of the schedule");
    v("grad_accum", c.grad_accum, "micro-batches per step");
    v("lr", c.lr, "peak learning rate");
    v("min_lr_ratio", c.min_lr_ratio, "the cosine schedule ends at lr × this");
    v("warmup_steps", c.warmup_steps, "linear warm-up steps");
    v("weight_decay", c.weight_decay, "AdamW decoupled weight decay (matrices only)");
    v("beta1", c.beta1, "AdamW beta1");
    v("beta2", c.beta2, "AdamW beta2");
    v("grad_clip", c.grad_clip, "global gradient-norm clip (0: none)");
    v("eval_every", c.eval_every, "steps between validation losses (0: only at the end)");
    v("eval_windows", c.eval_windows, "validation windows per evaluation");
    v("save_every", c.save_every, "steps between checkpoints (0: only at the end)");
    v("stop_after", c.stop_after, "stop after this step, keeping the schedule of steps (0: run to the end)");
    v("keep_checkpoints", c.keep_checkpoints, "complete checkpoints kept, newest first (0: all)");
    v("max_bad_steps", c.max_bad_steps, "bad steps in a row before training stops");
    v("spike_factor", c.spike_factor, "a loss above this × its running mean is a bad step (0: off)");
    v("seed", c.seed, "batch sampling");
    v("init_from", c.init_from, "run folder whose newest checkpoint the run starts from (its model, weights, moments, freeze mask)");
    v("tokenizer", c.tokenizer, "sentencepiece model to encode the corpus with (empty: the corpus's own; init_from's when set)");
    v("distill_from", c.distill_from, "run folder of the frozen teacher for output distillation (empty: none)");
    v("distill_weight", c.distill_weight, "lambda of the distillation term lambda * KL(p_teacher || p)");
  }
  void validate() const;
  // The step training ends after: stop_after when set, else steps.
  int64_t last_step() const { return stop_after > 0 ? stop_after : steps; }
};

struct RunConfig {
  ModelConfig model;
  TrainConfig train;
};

// Reads a TOML file, or a whole config as JSON (a run's config.json; empty path: the defaults, or
// `base` when given), then applies "section.key=value" overrides, and validates.
RunConfig load_run_config(const std::string& toml_path, const std::vector<std::string>& sets,
                          const RunConfig* base = nullptr);
// The TOML text itself (`where` names it in errors), validated; what the fuzz target calls.
RunConfig parse_run_config_toml(const std::string& text, const std::string& where);
// Sets one key ("model.hidden_size") from a JSON value, checked as the readers check it (the config is
// not validated as a whole: load_run_config does that).
void set_run_config_value(RunConfig& c, const std::string& key, const nlohmann::json& value, const std::string& where = "");
// A TOML document as JSON: tables as objects, arrays of tables as arrays of objects, scalars and
// arrays of scalars as themselves (null for anything else); a parse error names `where` and the line.
nlohmann::json parse_toml_document(const std::string& text, const std::string& where);
std::string run_config_to_json(const RunConfig& c);
RunConfig run_config_from_json(const std::string& json, const std::string& where);
// Every key ("model.num_local_experts", …) with its type, default value and meaning, in file order:
// [{"key", "type", "default", "meaning"}, …] (what `moe keys` prints).
nlohmann::json run_config_keys();

}  // namespace moe
