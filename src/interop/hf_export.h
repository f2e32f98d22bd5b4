// hf_export.h — `moe export --format hf`: a run's newest checkpoint as a Hugging Face model folder
// (config.json, model.safetensors under the hub's tensor names, the tokenizer files) that transformers
// loads as Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE or GraniteMoE (docs/INTEROP.md). The folder is written
// whole under a temporary name and renamed.
#pragma once
#include <array>
#include <string>

#include "core/enum_names.h"
#include "model/hf.h"

namespace moe {

// The dtype of exported weights.
enum class ExportDtype { f32, bf16, f16 };
template <>
struct EnumNames<ExportDtype> {
  static constexpr const char* what = "export dtype";
  static constexpr std::array<const char*, 3> names = {"f32", "bf16", "f16"};
};

struct ExportSummary {
  HfArch arch;
  int64_t params = 0;
  int64_t step = 0;
};
ExportSummary export_hf(const std::string& ckpt, const std::string& out, ExportDtype dtype, bool allow_nonfinite = false);

}  // namespace moe
