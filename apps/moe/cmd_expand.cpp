// cmd_expand.cpp — `moe expand --ckpt DIR --add-experts N --out DIR`: grow every MoE layer of a
// checkpoint by N experts for lifelong learning (docs/MECHANISMS.md §6), function-preserving, with the
// old parameters frozen; `moe train --init-from OUT` then trains it on new data.
#include <cstdio>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "lifelong/lifelong.h"

namespace moe::cli {

void add_expand(CLI::App& app) {
  static std::string ckpt, out;
  static ExpandOptions o;
  auto* cmd = app.add_subcommand("expand", "Add experts to every MoE layer of a checkpoint, computing what it computed, the "
                                           "old parameters frozen (lifelong learning; then `moe train --init-from OUT`)");
  cmd->add_option("--ckpt", ckpt, "Run folder of the checkpoint to expand (its newest)")->required();
  cmd->add_option("--add-experts", o.add_experts, "Experts added to each MoE layer (at granularity 1)")->required();
  cmd->add_option("--out", out, "Run folder to write the expanded checkpoint into (must not hold a run)")->required();
  add_enum_option(cmd, "--freeze", o.freeze, "What of the old model stays frozen");
  add_enum_option(cmd, "--init", o.init, "New experts: fresh draws with a zero down-projection, or noisy copies of old ones");
  cmd->add_option("--copy-noise", o.copy_noise, "--init copy: noise std relative to each expert tensor's std")
      ->capture_default_str();
  cmd->add_option("--entry-steps", o.entry_steps, "Optimizer steps over which new experts enter routing (their logit offset "
                                                  "rises from -20 to 0)")
      ->capture_default_str();
  cmd->callback([] {
    const ExpandSummary s = expand_run(ckpt, out, o);
    std::printf("expanded %s (step %lld): %d -> %d routed experts per MoE layer, %.3fM -> %.3fM parameters\n", ckpt.c_str(),
                static_cast<long long>(s.step), s.old_experts, s.new_experts, static_cast<double>(s.old_params) / 1e6,
                static_cast<double>(s.new_params) / 1e6);
    std::printf("frozen (--freeze %s): %.3fM parameters; trainable: %.3fM\n", name_of(o.freeze),
                static_cast<double>(s.frozen) / 1e6, static_cast<double>(s.new_params - s.frozen) / 1e6);
    std::printf("written to %s; train it with `moe train --init-from %s --set train.corpus=...`\n", out.c_str(), out.c_str());
  });
}

}  // namespace moe::cli
