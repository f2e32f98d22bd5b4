// cmd_import.cpp — `moe import HF_DIR --out DIR`: a Hugging Face MoE checkpoint (Mixtral, Qwen2-MoE,
// Qwen3-MoE, OLMoE, GraniteMoE) as a run folder every command takes (docs/INTEROP.md).
#include <cstdio>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "interop/hf_import.h"

namespace moe::cli {

void add_import(CLI::App& app) {
  static std::string hf_dir, out;
  auto* cmd = app.add_subcommand("import", "Read a Hugging Face MoE model folder (config.json + safetensors) into a run folder");
  cmd->add_option("hf_dir", hf_dir, "Hugging Face model folder")->required();
  cmd->add_option("--out", out, "Run folder to write (must not hold a run)")->required();
  cmd->callback([] {
    const ImportSummary s = import_hf(hf_dir, out);
    std::printf("imported %s (%s, %zu safetensors file(s)): %.3fM parameters, %d layers, %s\n", hf_dir.c_str(), name_of(s.arch),
                s.shards.size(), static_cast<double>(s.params) / 1e6, s.model.num_hidden_layers, s.model.describe_ffn().c_str());
    std::string tok;
    for (const std::string& f : s.tokenizer) tok += (tok.empty() ? "" : ", ") + f;
    std::printf("tokenizer files: %s\n", tok.empty() ? "none" : tok.c_str());
    std::printf("written to %s; try `moe inspect --ckpt %s` or `moe eval --ckpt %s --ids FILE`\n", out.c_str(), out.c_str(),
                out.c_str());
  });
}

}  // namespace moe::cli
