// cmd_export.cpp — `moe export --ckpt DIR --format hf --out PATH`: a run's newest checkpoint as a
// Hugging Face model folder transformers loads (docs/INTEROP.md).
#include <cstdio>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "interop/hf_export.h"

namespace moe::cli {

void add_export(CLI::App& app) {
  static std::string ckpt, out, format = "hf";
  static ExportDtype dtype = ExportDtype::f32;
  static bool allow_nonfinite = false;
  auto* cmd = app.add_subcommand("export", "Write a checkpoint as a Hugging Face model folder (Mixtral, Qwen2/3-MoE, OLMoE, GraniteMoE)");
  cmd->add_option("--ckpt", ckpt, "Run folder (its newest checkpoint)")->required();
  cmd->add_option("--format", format, "Output format")->check(CLI::IsMember({"hf"}))->capture_default_str();
  cmd->add_option("--out", out, "Folder to write (must not exist, or be empty)")->required();
  add_enum_option(cmd, "--dtype", dtype, "Weight dtype");
  add_allow_nonfinite(cmd, allow_nonfinite);
  cmd->callback([] {
    const ExportSummary s = export_hf(ckpt, out, dtype, allow_nonfinite);
    std::printf("exported %s (step %lld) as %s (%s, %s): %.3fM parameters in %s\n", ckpt.c_str(), static_cast<long long>(s.step),
                hf_class_name(s.arch), name_of(s.arch), name_of(dtype), static_cast<double>(s.params) / 1e6, out.c_str());
  });
}

}  // namespace moe::cli
