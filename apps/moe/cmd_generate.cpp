// cmd_generate.cpp — `moe generate`: continue a prompt with a trained model, optionally showing the
// experts each generated token went to.
#include <cstdio>
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "data/tokenizer.h"
#include "infer/generate.h"

namespace moe::cli {

void add_generate(CLI::App& app) {
  static std::string ckpt, prompt;
  static SampleOptions so;
  static bool show_experts = false, allow_nonfinite = false;
  auto* cmd = app.add_subcommand("generate", "Continue a prompt with a trained model");
  cmd->add_option("--ckpt", ckpt, "Checkpoint folder")->required();
  cmd->add_option("--prompt", prompt, "Text to continue")->required();
  cmd->add_option("--max-tokens", so.max_tokens, "Tokens to generate")->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", so.temperature, "Sampling temperature (0: greedy)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", so.top_k, "Keep the k most likely tokens (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", so.top_p, "Nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", so.seed, "Sampling seed");
  cmd->add_flag("--show-experts", show_experts, "Print the experts each generated token went to, per block with experts");
  add_allow_nonfinite(cmd, allow_nonfinite);
  cmd->callback([] {
    LoadedRun run = load_run(ckpt, allow_nonfinite);
    Tokenizer tok;
    tok.load(ckpt + "/tokenizer.model");
    std::printf("%s", prompt.c_str());
    std::fflush(stdout);
    std::vector<std::string> routes;
    generate(*run.model, tok.encode(prompt), so, [&](int32_t id, const BlockExperts& experts) {
      std::printf("%s", tok.token_text(id).c_str());
      std::fflush(stdout);
      if (!show_experts) return;
      std::string line = "'" + tok.piece(id) + "':";
      for (const auto& [block, ids] : experts) {
        line += " L" + std::to_string(block) + "[";
        for (size_t i = 0; i < ids.size(); ++i) {
          if (i) line += ",";
          line += std::to_string(ids[i]);
        }
        line += "]";
      }
      routes.push_back(line);
    });
    std::printf("\n");
    for (const std::string& r : routes) std::printf("%s\n", r.c_str());
  });
}

}  // namespace moe::cli
