// config.h — the configuration of one MoE feed-forward layer (docs/MECHANISMS.md §1–4), a plain struct.
// Each field has one name: its config key, the Hugging Face name where one exists. visit_fields lists
// them once, with their meaning; the TOML/JSON readers and writers and `moe keys` are generated from it.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/enum_names.h"
#include "moe/routers/kind.h"

namespace moe {

enum class DropPolicy { position, probs };
template <>
struct EnumNames<DropPolicy> {
  static constexpr const char* what = "drop policy";
  static constexpr std::array<const char*, 2> names = {"position", "probs"};
};

struct MoeConfig {
  int hidden_size = 512;               // d, the model width
  int moe_intermediate_size = 1024;    // one expert's width at granularity 1
  int num_local_experts = 8;           // routed experts E at granularity 1
  int num_experts_per_tok = 2;         // experts per token k at granularity 1
  int granularity = 1;                 // G: E·G experts of width moe_intermediate_size/G, k·G of them active
  RouterKind router = kDefaultRouter;
  bool norm_topk_prob = false;         // softmax_topk: gates p_i / Σ_I p
  float routed_scaling_factor = 1.0f;  // sigmoid_bias: gates scaled by it
  int n_group = 1;                     // group-limited routing: experts in n_group groups...
  int topk_group = 1;                  // ...of which the best topk_group groups are kept
  float router_jitter_noise = 0.0f;    // router input jitter x ⊙ U(1−ε, 1+ε), training only
  float router_init_std = 0.02f;       // W_r ~ N(0, std); 0 gives W_r = 0 (Shazeer)

  // Balance losses, each with its own coefficient; 0 turns a term off.
  float router_aux_loss_coef = 0.0f;   // Switch/GShard α·E·Σ f_i P_i
  float router_z_loss_coef = 0.0f;     // ST-MoE β·mean (logsumexp s)²
  float noisy_loss_coef = 0.0f;        // Shazeer's w for L_importance and L_load (noisy_topk)
  float expert_loss_coef = 0.0f;       // DeepSeek α1: expert-level balance loss
  float device_loss_coef = 0.0f;       // DeepSeek α2: device-level balance loss over device_groups
  int device_groups = 0;               // D devices for α2 (0: n_group)
  float seq_aux_loss_coef = 0.0f;      // DeepSeek-V3 sequence-wise balance loss α
  float bias_update_speed = 1e-3f;     // γ of the sigmoid_bias bias update
  float reinforce_coef = 1e-2f;        // RL-R: weight of the REINFORCE surrogate loss
  float reinforce_baseline_decay = 0.99f;  // RL-R: EMA decay of the reward baseline

  // Capacity
  float capacity_factor = 0.0f;        // C = ceil(cf·T·k/E); <= 0: dropless
  DropPolicy drop_policy = DropPolicy::position;

  // Shared experts (DeepSeekMoE, Qwen2-MoE)
  int n_shared_experts = 0;
  int shared_expert_intermediate_size = 0;  // width of one shared expert (0: the routed expert width)
  bool shared_expert_gate = false;     // Qwen2-MoE: shared sum scaled by sigmoid(x·w_sg)

  Precision precision = Precision::fp32;  // arithmetic of the GEMMs: the FFNs', attention's projections, the LM head

  // Lifelong expansion (docs/MECHANISMS.md §6): experts that `moe expand` adds start with a logit
  // offset of −kEntryOffset (the buffer router.entry_offset), which rises to 0 over entry_steps
  // optimizer steps; 0: the router keeps no offsets.
  int entry_steps = 0;
  static constexpr float kEntryOffset = 20.f;

  // Filled in by the model from its own settings (ModelConfig::moe_layer), not config keys of their own.
  int vocab_size = 0;                  // token ids are < vocab_size (the hash router's domain)
  uint64_t seed = 1;                   // parameter init and the layer's random streams
  uint64_t layer_id = 0;               // separates random streams of layers sharing a seed

  // The settings above, each under its config key with its meaning (the model's [model] table holds
  // them flat: model.num_local_experts, …). hidden_size, vocab_size, seed and layer_id are the model's.
  template <class Self, class V>
  static void visit_fields(Self& c, V&& v) {
    v("num_local_experts", c.num_local_experts, "routed experts E at granularity 1");
    v("num_experts_per_tok", c.num_experts_per_tok, "experts per token k at granularity 1");
    v("moe_intermediate_size", c.moe_intermediate_size, "width of one routed expert at granularity 1");
    v("granularity", c.granularity, "G: E·G experts of width moe_intermediate_size/G, k·G active");
    v("router", c.router, "how tokens choose experts (docs/MECHANISMS.md §2)");
    v("norm_topk_prob", c.norm_topk_prob, "softmax_topk: gates renormalised over the chosen experts");
    v("routed_scaling_factor", c.routed_scaling_factor, "sigmoid_bias: scale of the gates");
    v("n_group", c.n_group, "group-limited routing: experts in this many groups");
    v("topk_group", c.topk_group, "group-limited routing: the best groups kept per token");
    v("router_jitter_noise", c.router_jitter_noise, "router input multiplied by U(1-eps, 1+eps) in training");
    v("router_init_std", c.router_init_std, "W_r ~ N(0, std); 0: W_r = 0");
    v("router_aux_loss_coef", c.router_aux_loss_coef, "Switch/GShard load-balancing loss");
    v("router_z_loss_coef", c.router_z_loss_coef, "ST-MoE router z-loss");
    v("noisy_loss_coef", c.noisy_loss_coef, "noisy_topk: Shazeer's importance and load losses");
    v("expert_loss_coef", c.expert_loss_coef, "DeepSeek expert-level balance loss");
    v("device_loss_coef", c.device_loss_coef, "DeepSeek device-level balance loss");
    v("device_groups", c.device_groups, "devices for the device-level loss (0: n_group)");
    v("seq_aux_loss_coef", c.seq_aux_loss_coef, "DeepSeek-V3 sequence-wise balance loss");
    v("bias_update_speed", c.bias_update_speed, "sigmoid_bias: step of the selection-bias update");
    v("reinforce_coef", c.reinforce_coef, "reinforce: weight of the REINFORCE surrogate loss");
    v("reinforce_baseline_decay", c.reinforce_baseline_decay, "reinforce: EMA decay of the reward baseline");
    v("capacity_factor", c.capacity_factor, "C = ceil(cf·T·k/E) per expert; <= 0: dropless");
    v("drop_policy", c.drop_policy, "which pairs an expert over capacity keeps");
    v("n_shared_experts", c.n_shared_experts, "shared experts every token goes through");
    v("shared_expert_intermediate_size", c.shared_expert_intermediate_size, "width of one shared expert (0: the routed width)");
    v("shared_expert_gate", c.shared_expert_gate, "Qwen2-MoE: shared experts scaled by sigmoid(x·w_sg)");
    v("precision", c.precision, "arithmetic of the GEMMs of the FFNs, attention's projections and the LM head "
                                "(bf16: bf16 inputs, fp32 accumulation; weights, router, norms and losses stay fp32)");
    v("entry_steps", c.entry_steps, "steps over which experts added by `moe expand` enter routing (0: no entry offsets)");
  }

  // Derived sizes (valid after validate()).
  int n_experts() const { return num_local_experts * granularity; }      // E·G
  int k() const { return num_experts_per_tok * granularity; }            // k·G
  int expert_hidden() const { return moe_intermediate_size / granularity; }  // h/G
  int shared_width() const { return shared_expert_intermediate_size > 0 ? shared_expert_intermediate_size : expert_hidden(); }
  int n_device_groups() const { return device_groups > 0 ? device_groups : n_group; }
  // The balance-loss coefficients by name (the losses that act on the router's logits).
  std::vector<std::pair<const char*, float>> balance_coefs() const;
  int64_t router_params() const;  // the router's trained weights (W_r, and W_n for noisy_topk; none for hash)
  int64_t num_params() const;     // all parameters of the layer (routed, shared, router)

  // Throws moe::Error naming the field and the fix, e.g. "moe config: num_experts_per_tok = 9 is
  // larger than num_local_experts = 8; choose num_experts_per_tok <= num_local_experts".
  void validate() const;
  // Every field as a JSON object (keys: the field names above).
  std::string to_json() const;
};

}  // namespace moe
