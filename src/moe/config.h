// config.h — the configuration of one MoE feed-forward layer (docs/MECHANISMS.md §1–4), a plain struct.
// Names follow the papers and, where one exists, the Hugging Face config key in the comment.
#pragma once
#include <cstdint>
#include <string>

namespace moe {

enum class RouterKind { topk_softmax, softmax_topk, noisy_topk, sigmoid_bias, hash, base, sbase, reinforce, expert_choice };
enum class DropPolicy { position, probs };

RouterKind parse_router(const std::string& name);      // throws, listing the known names
DropPolicy parse_drop_policy(const std::string& name);
const char* router_name(RouterKind k);
std::string router_choices();  // every router name, "topk_softmax | softmax_topk | ..." (for --help)
const char* drop_policy_name(DropPolicy p);

struct MoeConfig {
  int d_model = 512;                   // hidden_size
  int d_ff_expert = 1024;              // moe_intermediate_size: one expert's width at granularity 1
  int experts = 8;                     // num_local_experts, at granularity 1
  int top_k = 2;                       // num_experts_per_tok, at granularity 1
  int granularity = 1;                 // G: E·G experts of width d_ff_expert/G, k·G of them active
  // topk_softmax | softmax_topk | noisy_topk | sigmoid_bias | hash | base | sbase | reinforce | expert_choice
  std::string router = "topk_softmax";
  bool renormalize = false;            // norm_topk_prob (softmax_topk): gates p_i / Σ_I p
  float routed_scaling = 1.0f;         // routed_scaling_factor (sigmoid_bias)
  int n_group = 1;                     // group-limited routing: experts in n_group groups...
  int topk_group = 1;                  // ...of which the best topk_group groups are kept
  float jitter_eps = 0.0f;             // router input jitter x ⊙ U(1−ε, 1+ε), training only
  float router_init_std = 0.02f;       // W_r ~ N(0, std); 0 gives W_r = 0 (Shazeer)

  // Balance losses, each with its own coefficient; 0 turns a term off.
  float aux_loss_coef = 0.0f;          // router_aux_loss_coef: Switch/GShard α·E·Σ f_i P_i
  float z_loss_coef = 0.0f;            // router_z_loss_coef: β·mean (logsumexp s)²
  float noisy_loss_coef = 0.0f;        // Shazeer's w for L_importance and L_load (noisy_topk)
  float expert_loss_coef = 0.0f;       // DeepSeek α1: expert-level balance loss
  float device_loss_coef = 0.0f;       // DeepSeek α2: device-level balance loss over device_groups
  int device_groups = 0;               // D devices for α2 (0: n_group)
  float seq_aux_loss_coef = 0.0f;      // DeepSeek-V3 sequence-wise balance loss α
  float bias_update_rate = 1e-3f;      // γ of the sigmoid_bias bias update
  float reinforce_coef = 1e-2f;        // RL-R: weight of the REINFORCE surrogate loss
  float reinforce_decay = 0.99f;       // RL-R: EMA decay of the reward baseline
  int vocab_size = 0;                  // token ids are < vocab_size (the hash router's domain)

  // Capacity
  float capacity_factor = 0.0f;        // C = ceil(cf·T·k/E); <= 0: dropless
  std::string drop_policy = "position";  // position | probs

  // Shared experts (DeepSeekMoE, Qwen2-MoE)
  int n_shared = 0;                    // n_shared_experts
  int shared_hidden = 0;               // width of one shared expert (0: the routed expert width)
  bool shared_gate = false;            // Qwen2-MoE: shared sum scaled by sigmoid(x·w_sg)

 // Arithmetic of the expert GEMMs: fp32, or bf16 (bf16 inputs, fp32 accumulation; weights,
  // gradients and the router stay fp32).
  std::string precision = "fp32";

  uint64_t seed = 1;                   // parameter init and the layer's random streams
  uint64_t layer_id = 0;               // separates random streams of layers sharing a seed

  // Derived sizes (valid after validate()).
  int n_experts() const { return experts * granularity; }      // E·G
  int k() const { return top_k * granularity; }                // k·G
  int expert_hidden() const { return d_ff_expert / granularity; }  // h/G
  int shared_width() const { return shared_hidden > 0 ? shared_hidden : expert_hidden(); }
  int n_device_groups() const { return device_groups > 0 ? device_groups : n_group; }
  RouterKind router_kind() const { return parse_router(router); }
  int64_t router_params() const;  // W_r (and W_n for noisy_topk; none for hash)
  int64_t num_params() const;     // all parameters of the layer (routed, shared, router)

  // Throws moe::Error naming the field and the fix, e.g.
  // "moe config: top_k = 9 is larger than experts = 8; choose top_k <= experts".
  void validate() const;
  // Every field as a JSON object (the keys are the field names above).
  std::string to_json() const;
};

}  // namespace moe
