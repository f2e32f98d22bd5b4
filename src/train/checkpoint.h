// checkpoint.h — the run folder and its checkpoints, each one complete or absent.
//
// A run folder (train.out) holds:
//   config.json       the RunConfig of the run (written when training starts)
//   tokenizer.model   the corpus's tokenizer
//   metrics.jsonl     one JSON line a step
//   .lock             held (flock) by the one `moe train` writing the folder; holds its PID
//   step-00000600/    a checkpoint: model.safetensors (every parameter under its Hugging Face-style
//                     name, PEER's full tables, the buffers: router biases and baselines, BatchNorm
//                     running statistics), optimizer.safetensors (AdamW moments), manifest.json
//                     (step, optimizer steps, the bad-step state, the freeze mask, the files and
//                     their sizes)
//
// A checkpoint is written into "step-N.tmp.<pid>/" (each file fsynced), its manifest last, then the
// folder is renamed to "step-N/" and the run folder fsynced: a kill or a full disk at any moment
// leaves the previous checkpoints as they were, and at most a temporary folder that the next writer
// removes. Readers take the newest complete checkpoint (a "step-N" folder whose manifest lists files
// that are there with their sizes). The newest train.keep_checkpoints are kept, and never the last
// one known good (see TrainState).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/transformer.h"
#include "train/adamw.h"
#include "train/run_config.h"

namespace moe {

// What a checkpoint holds besides the tensors, so that a resumed run continues bit for bit.
struct TrainState {
  int64_t step = 0;             // optimizer steps of the schedule done (the weights after them)
  int64_t optimizer_steps = 0;  // AdamW's own count (bias correction)
  double loss_ema = -1.0;       // running mean of the good steps' losses (< 0: none yet)
  int bad_in_row = 0;           // bad steps in a row before this checkpoint
  int64_t skipped_steps = 0;    // bad steps skipped in the whole run
  FreezeMask frozen;            // rows training leaves unchanged (`moe expand`; empty: none)
};

struct Checkpoint {
  int64_t step;
  std::string dir;  // run/step-N
};

// The folder of the checkpoint at `step` of a run: run/step-%08d.
std::string step_dir(const std::string& run, int64_t step);
// The complete checkpoints of a run folder, oldest first.
std::vector<Checkpoint> list_checkpoints(const std::string& run);
// The newest complete checkpoint; throws moe::Error naming the folder when there is none.
Checkpoint latest_checkpoint(const std::string& run);

// What save_checkpoint throws when a weight is NaN or infinite (nothing is written then).
struct NonFiniteWeights : Error {
  using Error::Error;
};

// Writes the model (and the optimizer when given) as checkpoint st.step of `run`, then removes the
// older ones beyond `keep` (0: none removed), never the one at step `protect`. Throws
// NonFiniteWeights when a weight is not finite and moe::Error when a write fails, leaving the earlier
// checkpoints as they were. With several ranks (comm) every rank calls it: the experts are gathered
// and rank 0 writes the layout of a single process (any number of ranks, or one, reads it back);
// NonFiniteWeights is thrown on every rank when any rank holds a bad weight.
void save_checkpoint(const std::string& run, TransformerLM& model, AdamW* opt, const TrainState& st, int keep,
                     int64_t protect, Comm* comm = nullptr);
// Loads the newest complete checkpoint of `run` into a model built from its config (and the
// optimizer when given); every tensor is checked by name and shape, and must be finite unless
// allow_nonfinite. Returns its state. A distributed model (TransformerLM::distribute) takes its
// rank's rows of each sharded tensor.
TrainState load_checkpoint(const std::string& run, TransformerLM& model, AdamW* opt, bool allow_nonfinite = false);

// The run's config.json (errors name the file and the fix).
RunConfig read_checkpoint_config(const std::string& run);
void write_run_config(const std::string& run, const RunConfig& c);

// A run folder's config and its newest complete checkpoint, loaded into a model built for it.
struct LoadedRun {
  RunConfig cfg;
  std::unique_ptr<TransformerLM> model;
  TrainState state;
};
LoadedRun load_run(const std::string& run, bool allow_nonfinite = false);

// c with the model of the run c.train.init_from (its config.json) when that is set; a model key that c
// sets to something else than both the default and that run's value is an error naming the key.
RunConfig with_init_model(RunConfig c);

// Renames the checkpoints after step `good` to "step-N.diverged" (kept for forensics, never read).
// Returns how many.
int quarantine_checkpoints_after(const std::string& run, int64_t good);
// What of a run the folder already holds ("" when nothing): e.g. "a checkpoint at step 600".
std::string describe_run(const std::string& run);
// Removes the run's checkpoints, config, metrics and cached shards (for `moe train --overwrite`).
void clear_run(const std::string& run);

// The held-out text of `corpus` encoded with the run's own tokenizer, as a token shard cached in the
// run folder (val-<corpus>.bin); returns its path.
std::string checkpoint_val_shard(const std::string& run, const RunConfig& c, const std::string& corpus);

}  // namespace moe
