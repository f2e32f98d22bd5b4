// routers.h — the concrete routers behind Router::create (docs/MECHANISMS.md §2), each with its
// traits (RouterTraits) and, where it has any, the config rules it needs (`check`). One file each.
#pragma once
#include "moe/routers/router.h"

namespace moe {

// Mixtral: top-k of s; gates softmax over the k chosen logits.
class TopkSoftmaxRouter : public Router {
 public:
  using Router::Router;
  static constexpr RouterTraits kTraits{.gating = Gating::softmax_of_topk};

 protected:
  void route(int T, const FfnContext& ctx, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;
};

// Switch (k=1), GShard, Qwen2-MoE, DeepSeek-V2: p = softmax(s); top-k of p; gates p_i, or with
// `norm_topk_prob` p_i / Σ_I p.
class SoftmaxTopkRouter : public Router {
 public:
  using Router::Router;
  static constexpr RouterTraits kTraits{.gating = Gating::topk_of_softmax};

 protected:
  void route(int T, const FfnContext& ctx, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;
};

// Shazeer et al. 2017: H = s + n·(softplus(x·W_n) + 1e-2), n ~ N(0,1) in training only; top-k of H;
// gates softmax over H restricted to the chosen experts. Owns W_n and computes the importance and
// load losses (w = noisy_loss_coef).
class NoisyTopkRouter : public Router {
 public:
  static constexpr RouterTraits kTraits{.weight_matrices = 2};
  explicit NoisyTopkRouter(const MoeConfig& c);
  Tensor wn, dwn;  // (E, d) W_n and its gradient
  Tensor raw;      // (T, E) x_r·W_nᵀ
  Tensor sigma;    // (T, E) softplus(raw) + 1e-2
  Tensor noise;    // (T, E) n ~ N(0, 1) of the last training forward (zeros at eval)
  Tensor noisy;    // (T, E) H

  void forward(const float* xr, int T, const FfnContext& ctx, Routing& r) override;
  void backward(const float* xr, const Routing& r, const float* dgate, float* dlogits, float* dxr) override;
  void params(std::vector<Param>& out, const std::string& prefix) override;
  RouterLosses losses() const override { return losses_; }

 protected:
  void route(int T, const FfnContext& ctx, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;

 private:
  bool training_ = false;
  RouterLosses losses_;
  std::vector<int32_t> thr_in_, thr_out_;  // (T) index in H of the (k+1)-th and the k-th largest
  std::vector<float> dimportance_, dload_;  // (E) d(loss)/d(Importance_i), d(loss)/d(Load_i)
  void compute_losses(int T, const Routing& r);
};

// DeepSeek-V3: a = σ(s); top-k of a + b; gates routed_scaling_factor · a_i / Σ_I a. Affinity for the
// balance losses: a / Σ a. b is not trained by gradient: training forwards count the pairs routed to
// each expert, and after_step moves b_i += γ·sign(mean_j load_j − load_i) (γ = bias_update_speed).
class SigmoidBiasRouter : public Router {
 public:
  explicit SigmoidBiasRouter(const MoeConfig& c);
  Tensor bias;  // (E) b
  Tensor sig;   // (T, E) a = σ(s)

  void prob_backward(const float* dprob, float* dlogits, int T) const override;
  Tensor* selection_bias() override { return &bias; }
  std::vector<std::pair<std::string, Tensor*>> buffers() override { return {{"bias", &bias}}; }
  void after_step() override;

 protected:
  void route(int T, const FfnContext& ctx, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;

 private:
  std::vector<int64_t> load_;  // (E) pairs routed by training forwards since the last after_step
};

// Hash Layers (Roller et al. 2021): the token id alone picks the experts, through a fixed random
// permutation π of the vocabulary: slot i of token v goes to expert (π(v) + i·⌊E/k⌋) mod E, so every
// slot is balanced over the vocabulary (each expert gets ⌊V/E⌋ or ⌈V/E⌉ ids). Gates 1/k (1 at k = 1).
// No router parameters (W_r is empty, so s = 0 and P is uniform) and no gradient.
class HashRouter : public Router {
 public:
  static constexpr RouterTraits kTraits{.weight_matrices = 0};
  // Needs vocab_size; no balance losses (they would be constants without gradient).
  static void check(const MoeConfig& c, const ConfigCheck& check);
  explicit HashRouter(const MoeConfig& c);
  std::vector<int32_t> table;  // (V) π(v) mod E, the expert of slot 0

  void prob_backward(const float*, float*, int) const override {}
  void params(std::vector<Param>&, const std::string&) override {}

 protected:
  void route(int T, const FfnContext& ctx, Routing& r) override;
  void gate_backward(int, const Routing&, const float*, float*) const override {}
};

// BASE layers (Lewis et al. 2021): in training, the exact balanced assignment of the T tokens to the
// E experts (expert e takes ⌊T/E⌋ tokens, one more for e < T mod E) that maximises Σ s_{t,e(t)}, found
// by an ε-scaling auction; at eval (and when decoding) the argmax of s. Gate σ(s_{t,e}). k = 1.
class BaseRouter : public Router {
 public:
  static constexpr RouterTraits kTraits{.expert_parallel = false};
  static void check(const MoeConfig& c, const ConfigCheck& check);  // exactly one expert per token
  using Router::Router;

 protected:
  void route(int T, const FfnContext& ctx, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;
};

// The auction algorithm of Bertsekas for the balanced assignment: assigns each of T rows of
// scores (T, E) to one column, column e taking exactly cap[e] rows (Σ cap = T), to maximise the total
// score. ε-scaling down to eps_final: the result is within T·eps_final of the optimum (exactly optimal
// when the best assignment beats the next by more). Returns the column of each row.
std::vector<int32_t> balanced_assignment(const float* scores, int T, int E, const std::vector<int>& cap,
                                         double eps_final);

// S-BASE (Clark et al. 2022): in training, top-k of the Sinkhorn-normalised exp(s) (no gradient
// through Sinkhorn); at eval top-k of s. Gates: k = 1 σ(s_i); k > 1 softmax over s_I.
class SBaseRouter : public Router {
 public:
  static constexpr RouterTraits kTraits{.expert_parallel = false};
  using Router::Router;
  Tensor balanced;  // (T, E) Sinkhorn-normalised scores of the last training forward, scaled to row sums 1
  int iterations = 0;  // Sinkhorn iterations of the last training forward

 protected:
  void route(int T, const FfnContext& ctx, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;
};

// Sinkhorn normalisation of docs/MECHANISMS.md §2: C = exp(s − rowmax); d0 = 1/(T·(C·d1)), d1 = 1/(E·(d0ᵀ·C)) until
// mean|Δd1| < tol or max_iter; writes T·(d0 ⊙ C ⊙ d1) (T, E): row sums 1, column sums T/E at the fixed
// point. Returns the iterations run.
int sinkhorn(const float* s, int T, int E, float* out, int max_iter = 50, float tol = 1e-4f);

// RL-R (Clark et al. 2022): in training, k experts sampled without replacement from π = softmax(s);
// at eval top-k of s; gates 1. The router learns from REINFORCE: with the per-token reward r_t = −CE_t
// (set_reward) and an EMA baseline b, loss_rl = −c·mean_t (r_t − b)·Σ_{i∈I} log π_i(x_t).
class ReinforceRouter : public Router {
 public:
  static constexpr RouterTraits kTraits{.trained_by_reward = true, .expert_parallel = false};
  explicit ReinforceRouter(const MoeConfig& c);
  Tensor baseline;  // (2): the EMA of the mean reward, and 1 once it holds a value
  Tensor draws;     // (T, k) the uniform draws of the last training forward

  void backward(const float* xr, const Routing& r, const float* dgate, float* dlogits, float* dxr) override;
  RouterLosses losses() const override { return losses_; }
  std::vector<std::pair<std::string, Tensor*>> buffers() override { return {{"baseline", &baseline}}; }
  void set_reward(const float* reward, const Routing& r) override;
  void after_step() override;

 protected:
  void route(int T, const FfnContext& ctx, Routing& r) override;
  void gate_backward(int, const Routing&, const float*, float*) const override {}

 private:
  std::vector<float> advantage_;  // (T) r_t − b, 0 where there is no reward; empty: no reward yet
  float advantage_scale_ = 0.f;   // c / (tokens with a reward)
  double reward_sum_ = 0.0;       // mean rewards of the micro-batches since the last step
  int reward_batches_ = 0;
  RouterLosses losses_;
};

// Expert choice (Zhou et al. 2022): p = softmax(s) over experts; each expert takes its C tokens of
// largest p_{t,e} (ties: earlier token), C = min(T, ⌈cf·T·k/E⌉) (expert_capacity, with cf =
// capacity_factor, 1 when <= 0); gate p_{t,e}. The routing obeys its capacity by construction, so the
// dispatch plan adds none. Not causal: whether a token gets an expert depends on the other tokens of
// the batch, later ones included. When decoding (FfnContext::causal) it falls back to token choice:
// top-k of p.
class ExpertChoiceRouter : public Router {
 public:
  static constexpr RouterTraits kTraits{.applies_capacity = true, .expert_parallel = false};
  static void check(const MoeConfig& c, const ConfigCheck& check);  // drop_policy stays position
  using Router::Router;
  int64_t capacity(int T) const;

 protected:
  void route(int T, const FfnContext& ctx, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;
};

// CV² = var / (mean² + 1e-10) of n values (population variance), and its gradient.
float cv_squared(const float* x, int n);
void cv_squared_backward(const float* x, int n, float dout, float* dx);

}  // namespace moe
