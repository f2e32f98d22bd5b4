// routers.h — the concrete routers behind Router::create (SPEC §2).
#pragma once
#include "moe/router.h"

namespace moe {

// Mixtral: top-k of s; gates softmax over the k chosen logits.
class TopkSoftmaxRouter : public Router {
 public:
  using Router::Router;

 protected:
  void route(int T, bool training, uint64_t step, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;
};

// Switch (k=1), GShard, Qwen2-MoE, DeepSeek-V2: p = softmax(s); top-k of p; gates p_i, or with
// `renormalize` p_i / Σ_I p.
class SoftmaxTopkRouter : public Router {
 public:
  using Router::Router;

 protected:
  void route(int T, bool training, uint64_t step, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;
};

// Shazeer et al. 2017: H = s + n·(softplus(x·W_n) + 1e-2), n ~ N(0,1) in training only; top-k of H;
// gates softmax over H restricted to the chosen experts. Owns W_n and computes the importance and
// load losses (w = noisy_loss_coef).
class NoisyTopkRouter : public Router {
 public:
  explicit NoisyTopkRouter(const MoeConfig& c);
  Tensor wn, dwn;  // (E, d) W_n and its gradient
  Tensor raw;      // (T, E) x_r·W_nᵀ
  Tensor sigma;    // (T, E) softplus(raw) + 1e-2
  Tensor noise;    // (T, E) n ~ N(0, 1) of the last training forward (zeros at eval)
  Tensor noisy;    // (T, E) H

  void forward(const float* xr, int T, bool training, uint64_t step, Routing& r) override;
  void backward(const float* xr, const Routing& r, const float* dgate, float* dlogits, float* dxr) override;
  void params(std::vector<Param>& out, const std::string& prefix) override;
  RouterLosses losses() const override { return losses_; }

 protected:
  void route(int T, bool training, uint64_t step, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;

 private:
  bool training_ = false;
  RouterLosses losses_;
  std::vector<int32_t> thr_in_, thr_out_;  // (T) index in H of the (k+1)-th and the k-th largest
  std::vector<float> dimportance_, dload_;  // (E) d(loss)/d(Importance_i), d(loss)/d(Load_i)
  void compute_losses(int T, const Routing& r);
};

// DeepSeek-V3: a = σ(s); top-k of a + b (b not trained by gradient, moved by update_bias);
// gates routed_scaling · a_i / Σ_I a. Affinity for the balance losses: a / Σ a.
class SigmoidBiasRouter : public Router {
 public:
  explicit SigmoidBiasRouter(const MoeConfig& c);
  Tensor bias;  // (E) b
  Tensor sig;   // (T, E) a = σ(s)

  void prob_backward(const float* dprob, float* dlogits, int T) const override;
  Tensor* selection_bias() override { return &bias; }

 protected:
  void route(int T, bool training, uint64_t step, Routing& r) override;
  void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const override;
};

// CV² = var / (mean² + 1e-10) of n values (population variance), and its gradient.
float cv_squared(const float* x, int n);
void cv_squared_backward(const float* x, int n, float dout, float* dx);

}  // namespace moe
