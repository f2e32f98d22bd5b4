// lifelong.h — lifelong pretraining (docs/MECHANISMS.md §6): growing a checkpoint by experts
// (`moe expand`) and running a sequence of phases over shifting corpora with several strategies,
// measuring what each forgets (`moe lifelong`).
//
// A phases file (TOML; configs/lifelong/phases.toml is the default sequence):
//   config        the MoE model and training settings of every phase (a run config TOML)
//   dense_config  the dense baseline of equal active parameters (for "dense-finetune")
//   out           the folder of the runs and results (--out replaces it)
//   phases        the corpora, in order (default: kjv, c-headers, fortunes, and pydoc where installed)
//   steps         training steps of each phase (the same for every strategy: equal training compute)
//   strategies    of "expand" (expand + freeze + distil), "finetune" (the same MoE, all parameters),
//                 "dense-finetune" (the dense model fine-tuned the same way), "expand-nodistill" (the
//                 ablation)
//   add_experts, freeze, init, entry_steps   what each new phase's expansion does (model/expand.h;
//                 add_experts defaults to E/2)
//   distill_weight   λ of the "expand" strategy's distillation term
//   tokenizer_mb  MB of each corpus's training text in the joint tokenizer's sample
//   eval_windows  validation windows of each evaluation
//   [set]         config keys set for every run (e.g. "train.batch_size" = 8)
//
// OUT/ holds tokenizer.model (the joint tokenizer), one run folder per (strategy, phase)
// (OUT/<strategy>/p<N>-<corpus>, the MoE strategies sharing OUT/shared/p0-<corpus>), the expanded
// checkpoints (…-expanded), lifelong.json (the evaluations so far: a rerun resumes from them and from
// the runs' checkpoints), and the results: forgetting.json, forgetting.md, forgetting.svg (the
// matrices) and forgetting-lines.svg.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/expand.h"
#include "train/run_config.h"

namespace moe {

struct ExpandSummary {
  int old_experts = 0, new_experts = 0;           // routed experts per MoE layer (E·G)
  int64_t old_params = 0, new_params = 0, frozen = 0;
  int64_t step = 0;                               // of the checkpoint expanded
};
// Writes OUT as a run folder holding the expanded checkpoint of the newest checkpoint of `ckpt` (its
// weights, AdamW moments grown with zero rows, the freeze mask), its config and tokenizer. OUT is
// written whole under a temporary name and renamed: complete or absent. An OUT holding a run is refused.
ExpandSummary expand_run(const std::string& ckpt, const std::string& out, const ExpandOptions& o);

struct LifelongPlan {
  std::string file, out;
  RunConfig moe_run, dense_run;  // the settings of the MoE strategies' runs and of the dense baseline's
  std::vector<std::string> phases;
  std::vector<std::string> strategies;
  int steps = 300;
  ExpandOptions expand;
  float distill_weight = 1.f;
  int tokenizer_mb = 2;
  int eval_windows = 128;
};
// Reads and checks a phases file (every error names the file and the key); out replaces its out.
LifelongPlan load_lifelong(const std::string& path, const std::string& out);
// Runs every phase of every strategy not yet done, evaluates each run on the corpora seen so far, and
// writes the results (see above).
void run_lifelong(const LifelongPlan& plan);

}  // namespace moe
