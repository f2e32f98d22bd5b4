// gguf_export.h — `moe export --format gguf`: a run's newest checkpoint as one GGUF file that
// llama.cpp loads (docs/INTEROP.md), in llama.cpp's architecture for what the model exports as
// (Mixtral-style → llama, GraniteMoE → granitemoe, Qwen2-MoE → qwen2moe, Qwen3-MoE → qwen3moe, OLMoE →
// olmoe) with its expert tensors (ffn_gate_exps, ffn_up_exps, ffn_down_exps, ffn_gate_inp, shared
// ffn_*_shexp); for llama and granitemoe the q and k rows are permuted from the Hugging Face
// rotate-half RoPE to the adjacent pairs they rotate. The vocabulary is the run's sentencepiece model
// ("llama": pieces, scores, types) or its imported tokenizer.json ("gpt2": pieces, merges, the
// pre-tokenizer by name). Weights in F32, F16, BF16 or Q8_0 (blocks of 32 with an fp16 scale, as
// llama.cpp quantizes); norms, biases and the router stay F32.
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "core/enum_names.h"

namespace moe {

enum class GgufType { f32, f16, bf16, q8_0 };
template <>
struct EnumNames<GgufType> {
  static constexpr const char* what = "GGUF weight type";
  static constexpr std::array<const char*, 4> names = {"f32", "f16", "bf16", "q8_0"};
};

struct GgufSummary {
  std::string arch;     // llama.cpp's architecture name
  int64_t tensors = 0;
  int64_t bytes = 0;    // of the file
  int64_t step = 0;
};
GgufSummary export_gguf(const std::string& ckpt, const std::string& path, GgufType type, bool allow_nonfinite = false);

}  // namespace moe
