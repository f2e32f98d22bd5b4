// trainer.h — training, evaluation and sampling for the transformer LM. The run folder and its
// checkpoints are described in train/checkpoint.h.
//
// Every step is checked: a non-finite loss or gradient norm, or a loss spike (train.spike_factor),
// makes it a bad step whose update is skipped and counted ("skipped" in its metrics line); after
// train.max_bad_steps in a row training stops with an error naming the step, the checkpoints written
// since the last good step are set aside as "step-N.diverged", and the last good one is kept.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/routing_stats.h"
#include "train/run_config.h"

namespace moe {

struct TrainSummary {
  int64_t steps = 0;
  double val_loss = 0.0, val_ppl = 0.0;
  double tokens_per_s = 0.0, mfu = 0.0;  // median over the training steps
  double run_seconds = 0.0;              // wall time of the steps, evaluations and checkpoints included
  std::string load_summary;  // one line: per MoE layer, the max/mean load and CV
};

struct TrainOptions {
  bool resume = false;     // continue the run in train.out from its newest complete checkpoint
  bool overwrite = false;  // replace the run train.out holds (without it, a folder holding a run is an error)
};

// Trains per c into c.train.out, which it holds locked (a second writer gets an error naming this
// process); prints progress; returns the summary. Throws moe::Error when training diverges.
TrainSummary train_model(const RunConfig& c, const TrainOptions& o = {});

// The held-out text of `corpus` encoded with the checkpoint's own tokenizer, as a token shard cached
// in the checkpoint folder (val-<corpus>.bin); returns its path.
std::string checkpoint_val_shard(const std::string& ckpt, const RunConfig& c, const std::string& corpus);

// Mean cross-entropy over the first `windows` windows of the shard, batched.
double evaluate(TransformerLM& model, const TokenShard& shard, int L, int windows, int batch);

// Routing over the first `windows` windows of a shard, per MoE layer: the model runs with targets in
// eval mode, or with train_routing in training mode (noise, sampling, balanced assignment; no
// gradient). Returns the mean cross-entropy; layers gets the index of each MoE layer, stats its
// metrics.
double routing_report(TransformerLM& model, const TokenShard& shard, int L, int windows, int batch, bool train_routing,
                      std::vector<int>& layers, std::vector<RoutingStats>& stats);

// Expert usage and unevenness per PEER layer over the first `windows` windows of a shard, in eval
// mode. Returns the mean cross-entropy; layers gets the index of each PEER layer.
double peer_report(TransformerLM& model, const TokenShard& shard, int L, int windows, int batch, std::vector<int>& layers,
                   std::vector<PeerStats>& stats);

// Per MoE layer the router metrics of docs/MECHANISMS.md §8 from its last forward (seq_len for the consecutive rate).
nlohmann::json router_metrics(TransformerLM& model, int seq_len);
// Per PEER layer the usage and unevenness of its last forward.
nlohmann::json peer_metrics(TransformerLM& model);

struct SampleOptions {
  int max_tokens = 64;
  float temperature = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 1;
};
// Continues `prompt`; on_token(id, experts per MoE layer) is called for each generated token.
std::vector<int32_t> generate(TransformerLM& model, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<void(int32_t, const std::vector<std::vector<int32_t>>&)>& on_token = {});

}  // namespace moe
