// cmd_export.cpp — `moe export --ckpt DIR --format hf|gguf --out PATH`: a run's newest checkpoint as a
// Hugging Face model folder transformers loads, or a GGUF file llama.cpp loads (docs/INTEROP.md).
#include <cstdio>
#include <string>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "interop/gguf_export.h"
#include "interop/hf_export.h"

namespace moe::cli {

void add_export(CLI::App& app) {
  static std::string ckpt, out, format = "hf";
  static std::string dtype = "f32";
  static bool allow_nonfinite = false;
  auto* cmd = app.add_subcommand("export", "Write a checkpoint as a Hugging Face model folder (Mixtral, Qwen2/3-MoE, OLMoE, "
                                           "GraniteMoE) or a GGUF file for llama.cpp");
  cmd->add_option("--ckpt", ckpt, "Run folder (its newest checkpoint)")->required();
  cmd->add_option("--format", format, "hf: a model folder; gguf: one file for llama.cpp")
      ->check(CLI::IsMember({"hf", "gguf"}))
      ->capture_default_str();
  cmd->add_option("--out", out, "hf: folder to write (must not exist, or be empty); gguf: file to write (must not exist)")
      ->required();
  cmd->add_option("--dtype", dtype, "Weight dtype: f32 | bf16 | f16, and for gguf also q8_0")
      ->check(CLI::IsMember({"f32", "bf16", "f16", "q8_0"}))
      ->capture_default_str();
  add_allow_nonfinite(cmd, allow_nonfinite);
  cmd->callback([] {
    if (format == "gguf") {
      const GgufSummary g = export_gguf(ckpt, out, parse_enum<GgufType>(dtype, "--dtype"), allow_nonfinite);
      std::printf("exported %s (step %lld) as GGUF (llama.cpp architecture %s, %s): %lld tensors, %.2f MB in %s\n", ckpt.c_str(),
                  static_cast<long long>(g.step), g.arch.c_str(), dtype.c_str(), static_cast<long long>(g.tensors),
                  static_cast<double>(g.bytes) / 1e6, out.c_str());
      return;
    }
    if (dtype == "q8_0") throw CLI::ValidationError("--dtype", "q8_0 is for --format gguf; an hf folder takes f32, bf16 or f16");
    const ExportSummary s = export_hf(ckpt, out, parse_enum<ExportDtype>(dtype, "--dtype"), allow_nonfinite);
    std::printf("exported %s (step %lld) as %s (%s, %s): %.3fM parameters in %s\n", ckpt.c_str(), static_cast<long long>(s.step),
                hf_class_name(s.arch), name_of(s.arch), dtype.c_str(), static_cast<double>(s.params) / 1e6, out.c_str());
  });
}

}  // namespace moe::cli
