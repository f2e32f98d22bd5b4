// trainer.h — the training loop of the transformer LM: batches, forward and backward, gradient
// accumulation and clipping, AdamW, the learning-rate schedule, the metrics line of each step,
// evaluation and checkpoints. The run folder and its checkpoints are described in train/checkpoint.h.
//
// Every step is checked: a non-finite loss or gradient norm, or a loss spike (train.spike_factor),
// makes it a bad step whose update is skipped and counted ("skipped" in its metrics line); after
// train.max_bad_steps in a row training stops with an error naming the step, the checkpoints written
// since the last good step are set aside as "step-N.diverged", and the last good one is kept.
#pragma once
#include <cstdint>
#include <string>

#include "core/comm.h"
#include "train/run_config.h"

namespace moe {

struct TrainSummary {
  int64_t steps = 0;
  double val_loss = 0.0, val_ppl = 0.0;
  double tokens_per_s = 0.0, mfu = 0.0;  // median over the training steps
  double run_seconds = 0.0;              // wall time of the steps, evaluations and checkpoints included
  std::string load_summary;  // one line: per sparse FFN, its metrics of the last step in a few words
};

struct TrainOptions {
  bool resume = false;     // continue the run in train.out from its newest complete checkpoint
  bool overwrite = false;  // replace the run train.out holds (without it, a folder holding a run is an error)
  // The ranks of an expert-parallel job (docs/DISTRIBUTED.md), every one calling train_model with the
  // same config; null or one rank: a single process. Rank 0 alone writes the run folder.
  Comm* comm = nullptr;
  // Time every phase of each step (train/step_profile.h): "profile_ms" in each metrics line and a
  // table at the end.
  bool profile = false;
};

// Trains per c into c.train.out, which it holds locked (a second writer gets an error naming this
// process); prints progress; returns the summary. Throws moe::Error when training diverges.
TrainSummary train_model(const RunConfig& c, const TrainOptions& o = {});

}  // namespace moe
