// expand.h — lifelong expansion (docs/MECHANISMS.md §6): a model with more routed experts in every MoE
// layer that computes exactly what the old model did (to fp32 rounding) until training moves it, and
// the freeze mask of what existed before.
//
// How the function is kept: the old experts, router rows, shared experts and every other parameter
// are copied; the new router rows are zero, and the new experts enter routing behind a logit offset
// of −20 (router.entry_offset) that rises to 0 over model.entry_steps optimizer steps, so at first
// they are never chosen and their share of any softmax is e^−20 of the old experts'. New experts
// start as fresh draws with a zero down-projection (W2 = 0), or as noisy copies of the old experts.
// A capacity (capacity_factor > 0, or expert choice's own) is scaled by E'/E, so that each old expert
// keeps the capacity C it had. Refused: models without MoE layers, a router without router rows (hash),
// and group-limited routing (n_group > 1 would regroup the experts).
#pragma once
#include <array>
#include <cstdint>
#include <memory>

#include "core/enum_names.h"
#include "core/tensor.h"
#include "model/transformer.h"

namespace moe {

// What of the old model is frozen: its routed and shared experts; those and their router rows (the
// default, docs/MECHANISMS.md §6); or every parameter it had (only new experts and router rows train).
enum class FreezeScope { experts, experts_router, all_old };
template <>
struct EnumNames<FreezeScope> {
  static constexpr const char* what = "freeze scope";
  static constexpr std::array<const char*, 3> names = {"experts", "experts+router", "all-old"};
};
// How new experts start: fresh draws with W2 = 0, or copies of old expert (e − E) mod E plus noise.
enum class ExpertInit { random, copy };
template <>
struct EnumNames<ExpertInit> {
  static constexpr const char* what = "expert init";
  static constexpr std::array<const char*, 2> names = {"random", "copy"};
};

struct ExpandOptions {
  int add_experts = 0;  // N new experts per MoE layer, at granularity 1 (N·G fine-grained ones)
  FreezeScope freeze = FreezeScope::experts_router;
  ExpertInit init = ExpertInit::random;
  float copy_noise = 0.01f;  // init = copy: noise std relative to each expert tensor's std
  int entry_steps = 100;     // steps over which the new experts' logit offset rises from −20 to 0
};

// The config of the expanded model; throws moe::Error naming the setting when the model cannot be
// expanded (see above) or the options are out of range.
ModelConfig expanded_config(const ModelConfig& c, const ExpandOptions& o);
// The expanded model built from `old` (its weights and buffers), and in *frozen the rows of what
// `old` had, per o.freeze.
std::unique_ptr<TransformerLM> expand_model(const TransformerLM& old, const ExpandOptions& o, FreezeMask* frozen);
// A tensor of `old`'s state grown to shape `to` along dimension 0, the new rows zero (AdamW moments).
Tensor grow_rows_zero(const Tensor& old, const std::vector<int64_t>& to);

}  // namespace moe
