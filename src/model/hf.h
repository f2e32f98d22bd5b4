// hf.h — the Hugging Face side of the model: the config.json of each MoE architecture moe.cpp runs,
// read into a ModelConfig and written from one, and where each parameter lives in their checkpoints
// (docs/INTEROP.md). One table serves import and export: an HF tensor is a list of spans of the
// model's parameters (Mixtral's per-expert w1 is expert e's rows of experts.w1; GraniteMoE's
// input_linear is w1 and w3 of every expert, interleaved).
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/enum_names.h"
#include "model/config.h"

namespace moe {

// The architectures, by their config.json "model_type".
// deepseek is DeepSeekMoE (the first one: multi-head attention, shared experts without a gate, dense
// first blocks); DeepSeek-V2/V3 add multi-head latent attention, which is refused.
enum class HfArch { mixtral, qwen2_moe, qwen3_moe, olmoe, granitemoe, deepseek };
template <>
struct EnumNames<HfArch> {
  static constexpr const char* what = "Hugging Face architecture";
  static constexpr std::array<const char*, 6> names = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "deepseek"};
};
const char* hf_class_name(HfArch a);  // "MixtralForCausalLM", ...

struct HfModel {
  HfArch arch;
  ModelConfig model;
};
// The model a config.json describes. Throws moe::Error naming `where` and the field for what cannot be
// honoured: an unknown model_type, rope_scaling, an activation other than SiLU, biases on the output
// projection, DeepSeek's latent attention, clip_qkv...
HfModel model_from_hf_config(const nlohmann::json& j, const std::string& where);
// The architecture a model exports as: mixtral (softmax of the top-k logits, no shared experts),
// qwen2_moe (top-k of the softmax, with or without a gated shared expert), qwen3_moe (the same with
// per-head QK-norm), olmoe (QK-norm over the projection), granitemoe (the Granite multipliers) or
// deepseek (top-k of the softmax with shared experts that have no gate).
// Throws moe::Error naming the setting none of them has (a PEER model, a noisy router, ...).
HfArch hf_arch_of(const ModelConfig& c);
// config.json for `c` as `arch` (hf_arch_of(c)): read back by model_from_hf_config it gives c's model.
nlohmann::json hf_config_of(const ModelConfig& c, HfArch arch);

// Elements [hf_offset, hf_offset + count) of an HF tensor are elements [param_offset, ...) of param.
struct HfSpan {
  std::string param;
  size_t param_offset = 0, hf_offset = 0, count = 0;
};
struct HfTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<HfSpan> spans;  // cover the tensor, in order
};
// Every tensor of an `arch` checkpoint of model c, with the parameters (by their moe.cpp names) it holds.
std::vector<HfTensor> hf_tensors(const ModelConfig& c, HfArch arch);

}  // namespace moe
