// moe_cases.h — the MoE layer configurations that the gradient and parity tests run: one per router
// and per option that carries a gradient, at small shapes.
#pragma once
#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "moe/moe_layer.h"

namespace moe::test {

struct LayerCase {
  std::string name;
  MoeConfig cfg;
  bool training = true;
  int T = 16;
  int seq_len = 0;
  std::vector<int32_t> tokens = {};  // (T) token ids, for the hash router
  std::vector<float> reward = {};    // (T) per-token rewards (NaN: none), for reinforce; empty: no reward
};

// gtest prints the case by its name instead of a byte dump.
inline void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

inline MoeConfig small_config(const std::string& router) {
  MoeConfig c;
  c.hidden_size = 12;
  c.moe_intermediate_size = 8;
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.router = parse_enum<RouterKind>(router, "router");
  c.seed = 11;
  return c;
}

inline std::vector<LayerCase> layer_cases() {
  std::vector<LayerCase> v;
  {
    LayerCase c{"topk_softmax_aux_z", small_config("topk_softmax")};
    c.cfg.router_aux_loss_coef = 0.3f;
    c.cfg.router_z_loss_coef = 0.05f;
    v.push_back(c);
  }
  {
    LayerCase c{"switch_top1_capacity_position", small_config("softmax_topk")};
    c.cfg.num_experts_per_tok = 1;
    c.cfg.router_aux_loss_coef = 0.2f;
    c.cfg.capacity_factor = 1.0f;
    v.push_back(c);
  }
  {
    LayerCase c{"softmax_topk_renorm_deepseek_losses", small_config("softmax_topk")};
    c.cfg.norm_topk_prob = true;
    c.cfg.expert_loss_coef = 0.2f;
    c.cfg.device_loss_coef = 0.3f;
    c.cfg.device_groups = 2;
    v.push_back(c);
  }
  {
    LayerCase c{"softmax_topk_group_limited", small_config("softmax_topk")};
    c.cfg.num_local_experts = 8;
    c.cfg.n_group = 4;
    c.cfg.topk_group = 2;
    c.cfg.router_aux_loss_coef = 0.1f;
    v.push_back(c);
  }
  {
    LayerCase c{"noisy_topk_importance_load", small_config("noisy_topk")};
    c.cfg.noisy_loss_coef = 0.5f;
    v.push_back(c);
  }
  {
    LayerCase c{"noisy_topk_eval", small_config("noisy_topk")};
    c.cfg.noisy_loss_coef = 0.5f;
    c.training = false;
    v.push_back(c);
  }
  {
    LayerCase c{"sigmoid_bias_seq_loss_groups", small_config("sigmoid_bias")};
    c.cfg.num_local_experts = 8;
    c.cfg.n_group = 4;
    c.cfg.topk_group = 2;
    c.cfg.routed_scaling_factor = 2.5f;
    c.cfg.seq_aux_loss_coef = 0.3f;
    c.seq_len = 8;
    v.push_back(c);
  }
  {
    LayerCase c{"topk_softmax_jitter", small_config("topk_softmax")};
    c.cfg.router_jitter_noise = 0.1f;
    c.cfg.router_z_loss_coef = 0.05f;
    v.push_back(c);
  }
  {
    LayerCase c{"shared_gated_granularity2", small_config("softmax_topk")};
    c.cfg.granularity = 2;
    c.cfg.n_shared_experts = 2;
    c.cfg.shared_expert_gate = true;
    c.cfg.router_aux_loss_coef = 0.1f;
    v.push_back(c);
  }
  {
    LayerCase c{"shared_plain_capacity_probs", small_config("topk_softmax")};
    c.cfg.n_shared_experts = 1;
    c.cfg.shared_expert_intermediate_size = 6;
    c.cfg.capacity_factor = 0.75f;
    c.cfg.drop_policy = DropPolicy::probs;
    v.push_back(c);
  }
  {
    LayerCase c{"hash_top2_shared", small_config("hash")};
    c.cfg.vocab_size = 37;
    c.cfg.n_shared_experts = 1;
    v.push_back(c);
  }
  {
    LayerCase c{"base_balanced_assignment", small_config("base")};
    c.cfg.num_experts_per_tok = 1;
    c.cfg.router_aux_loss_coef = 0.2f;
    v.push_back(c);
  }
  {
    LayerCase c{"base_eval_argmax", small_config("base")};
    c.cfg.num_experts_per_tok = 1;
    c.training = false;
    v.push_back(c);
  }
  {
    LayerCase c{"sbase_top1", small_config("sbase")};
    c.cfg.num_experts_per_tok = 1;
    c.cfg.router_z_loss_coef = 0.05f;
    v.push_back(c);
  }
  {
    LayerCase c{"sbase_top2", small_config("sbase")};
    c.cfg.router_aux_loss_coef = 0.1f;
    v.push_back(c);
  }
  {
    LayerCase c{"reinforce_reward", small_config("reinforce")};
    c.cfg.reinforce_coef = 0.5f;
    c.cfg.router_aux_loss_coef = 0.1f;
    c.reward.resize(static_cast<size_t>(c.T));
    fill_normal(c.reward.data(), c.reward.size(), 3, 3, -3.f, 1.f);
    c.reward[5] = std::nanf("");  // a token without a target
    v.push_back(c);
  }
  {
    LayerCase c{"reinforce_eval", small_config("reinforce")};
    c.training = false;
    v.push_back(c);
  }
  {
    LayerCase c{"expert_choice", small_config("expert_choice")};
    c.cfg.router_aux_loss_coef = 0.1f;
    c.cfg.router_z_loss_coef = 0.05f;
    v.push_back(c);
  }
  {
    LayerCase c{"expert_choice_cf_half_granularity2", small_config("expert_choice")};
    c.cfg.capacity_factor = 0.5f;
    c.cfg.granularity = 2;
    v.push_back(c);
  }
  for (LayerCase& c : v)
    if (c.cfg.vocab_size > 0)
      for (int t = 0; t < c.T; ++t) c.tokens.push_back((t * 11 + 3) % c.cfg.vocab_size);
  return v;
}

// The case's forward (step 3), then its rewards when it has some.
inline void case_forward(MoeLayer& layer, const LayerCase& c, const float* x, float* y) {
  layer.forward(x, c.T, y, {c.training, 3, c.seq_len, c.tokens.empty() ? nullptr : c.tokens.data(), false});
  if (!c.reward.empty()) layer.set_reward(c.reward.data());
}

// Parameters of a test layer drawn wider than the defaults, so that router scores are well separated.
inline void randomize(MoeLayer& layer, uint64_t seed) {
  uint64_t stream = 100;
  for (Param& p : layer.params()) {
    float std = p.name.find("router") != std::string::npos ? 0.5f : 0.3f;
    fill_normal(p.value->data(), p.value->numel(), seed, stream++, 0.f, std);
  }
  if (Tensor* b = layer.router->selection_bias()) fill_normal(b->data(), b->numel(), seed, stream++, 0.f, 0.1f);
}

}  // namespace moe::test
