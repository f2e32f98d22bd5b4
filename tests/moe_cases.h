// moe_cases.h — the MoE layer configurations that the gradient and parity tests run: one per router
// and per option that carries a gradient, at small shapes.
#pragma once
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
};

// gtest prints the case by its name instead of a byte dump.
inline void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

inline MoeConfig small_config(const std::string& router) {
  MoeConfig c;
  c.d_model = 12;
  c.d_ff_expert = 8;
  c.experts = 4;
  c.top_k = 2;
  c.router = router;
  c.seed = 11;
  return c;
}

inline std::vector<LayerCase> layer_cases() {
  std::vector<LayerCase> v;
  {
    LayerCase c{"topk_softmax_aux_z", small_config("topk_softmax")};
    c.cfg.aux_loss_coef = 0.3f;
    c.cfg.z_loss_coef = 0.05f;
    v.push_back(c);
  }
  {
    LayerCase c{"switch_top1_capacity_position", small_config("softmax_topk")};
    c.cfg.top_k = 1;
    c.cfg.aux_loss_coef = 0.2f;
    c.cfg.capacity_factor = 1.0f;
    v.push_back(c);
  }
  {
    LayerCase c{"softmax_topk_renorm_deepseek_losses", small_config("softmax_topk")};
    c.cfg.renormalize = true;
    c.cfg.expert_loss_coef = 0.2f;
    c.cfg.device_loss_coef = 0.3f;
    c.cfg.device_groups = 2;
    v.push_back(c);
  }
  {
    LayerCase c{"softmax_topk_group_limited", small_config("softmax_topk")};
    c.cfg.experts = 8;
    c.cfg.n_group = 4;
    c.cfg.topk_group = 2;
    c.cfg.aux_loss_coef = 0.1f;
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
    c.cfg.experts = 8;
    c.cfg.n_group = 4;
    c.cfg.topk_group = 2;
    c.cfg.routed_scaling = 2.5f;
    c.cfg.seq_aux_loss_coef = 0.3f;
    c.seq_len = 8;
    v.push_back(c);
  }
  {
    LayerCase c{"topk_softmax_jitter", small_config("topk_softmax")};
    c.cfg.jitter_eps = 0.1f;
    c.cfg.z_loss_coef = 0.05f;
    v.push_back(c);
  }
  {
    LayerCase c{"shared_gated_granularity2", small_config("softmax_topk")};
    c.cfg.granularity = 2;
    c.cfg.n_shared = 2;
    c.cfg.shared_gate = true;
    c.cfg.aux_loss_coef = 0.1f;
    v.push_back(c);
  }
  {
    LayerCase c{"shared_plain_capacity_probs", small_config("topk_softmax")};
    c.cfg.n_shared = 1;
    c.cfg.shared_hidden = 6;
    c.cfg.capacity_factor = 0.75f;
    c.cfg.drop_policy = "probs";
    v.push_back(c);
  }
  return v;
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
