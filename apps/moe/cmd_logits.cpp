// cmd_logits.cpp — `moe logits --ckpt DIR --ids FILE --out FILE.npy|.safetensors`: the logits of
// every position of given token ids, for comparison with another implementation.
#include <cstdio>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "interop/scoring.h"

namespace moe::cli {

void add_logits(CLI::App& app) {
  static std::string ckpt, ids, out;
  static int threads = 0;
  static bool allow_nonfinite = false;
  auto* cmd = app.add_subcommand("logits", "Write the logits of given token ids (.npy or .safetensors)");
  cmd->add_option("--ckpt", ckpt, "Checkpoint folder")->required();
  cmd->add_option("--ids", ids, "Token ids: whitespace-separated integers, one sequence per line (equal lengths)")->required();
  cmd->add_option("--out", out, "File to write: .npy (float32) or .safetensors (tensor \"logits\")")->required();
  add_threads(cmd, threads);
  add_allow_nonfinite(cmd, allow_nonfinite);
  cmd->callback([] {
    apply_threads(threads);
    LoadedRun run = load_run(ckpt, allow_nonfinite);
    const std::vector<int64_t> shape = write_logits(*run.model, read_token_ids(ids, run.cfg.model.vocab_size), out);
    std::string dims;
    for (int64_t s : shape) dims += (dims.empty() ? "" : " x ") + std::to_string(s);
    std::printf("logits (%s) written to %s\n", dims.c_str(), out.c_str());
  });
}

}  // namespace moe::cli
