// run_config.h — the configuration of a training run: the model (Hugging Face names where they exist)
// and the training settings, read from TOML with `--set section.key=value` overrides, written to and
// read from JSON inside checkpoints. Unknown keys and wrong types are errors that name the key.
//
//   [model]  vocab_size, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
//            intermediate_size, max_position_embeddings, rms_norm_eps, rope_theta,
//            tie_word_embeddings, initializer_range, ffn ("moe" | "dense"), first_k_dense_replace,
//            num_local_experts, num_experts_per_tok, moe_intermediate_size, granularity, router,
//            norm_topk_prob, routed_scaling_factor, n_group, topk_group, router_jitter_noise,
//            router_aux_loss_coef, router_z_loss_coef, noisy_loss_coef, expert_loss_coef,
//            device_loss_coef, device_groups, seq_aux_loss_coef, bias_update_speed, capacity_factor,
//            drop_policy, n_shared_experts, shared_expert_intermediate_size, shared_expert_gate,
//            precision, router_init_std, seed
//   [train]  corpus, data_dir, out, batch_size, steps, grad_accum, lr, min_lr_ratio, warmup_steps,
//            weight_decay, beta1, beta2, grad_clip, eval_every, eval_windows, save_every, stop_after,
//            keep_checkpoints, max_bad_steps, spike_factor, seed
// Integers must be whole numbers within their type's range, floats finite: 8.9 or 4294967552 for an
// int is an error that names the key, never a silent truncation or wrap.
#pragma once
#include <string>
#include <vector>

#include "model/transformer.h"

namespace moe {

struct TrainConfig {
  std::string corpus = "kjv";
  std::string data_dir = "data";
  std::string out = "runs/default";
  int batch_size = 16;
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
  void validate() const;
};

struct RunConfig {
  ModelConfig model;
  TrainConfig train;
};

// Reads a TOML file (empty path: the defaults, or `base` when given) then applies "section.key=value"
// overrides, and validates.
RunConfig load_run_config(const std::string& toml_path, const std::vector<std::string>& sets,
                          const RunConfig* base = nullptr);
// The TOML text itself (`where` names it in errors), validated; what the fuzz target calls.
RunConfig parse_run_config_toml(const std::string& text, const std::string& where);
std::string run_config_to_json(const RunConfig& c);
RunConfig run_config_from_json(const std::string& json, const std::string& where);

}  // namespace moe
