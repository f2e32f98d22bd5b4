// reinforce.cpp — RL-R (Clark et al. 2022): routing as a policy trained by REINFORCE with the
// language-model loss of each token as its (negative) reward.
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "moe/routers/routers.h"

namespace moe {

ReinforceRouter::ReinforceRouter(const MoeConfig& c) : Router(c), baseline({2}) {}

void ReinforceRouter::route(int T, const FfnContext& ctx, Routing& r) {
  softmax_rows(T);
  losses_ = {};
  advantage_.clear();
  if (!ctx.training || ctx.causal) {
    parallel_for(static_cast<size_t>(T), [&](size_t t) { select_topk(logits.data() + t * E, r.expert.data() + t * k); }, 256);
  } else {
    // k draws without replacement: each draw inverts the CDF of π over the experts not yet taken.
    const uint64_t stream = (ctx.step << 16) | (cfg.layer_id << 4) | 6;
    draws.resize({T, k});
    fill_uniform(draws.data(), draws.numel(), cfg.seed, stream, 0.f, 1.f);
    parallel_for(static_cast<size_t>(T), [&](size_t t) {
      const float* p = prob.data() + t * E;
      int32_t* idx = r.expert.data() + t * k;
      thread_local std::vector<uint8_t> taken;
      taken.assign(static_cast<size_t>(E), 0);
      float left = 1.f;
      for (int i = 0; i < k; ++i) {
        float u = draws[t * k + static_cast<size_t>(i)] * left;
        int pick = -1;
        for (int e = 0; e < E; ++e) {
          if (taken[static_cast<size_t>(e)]) continue;
          pick = e;  // the last expert not taken catches rounding
          if ((u -= p[e]) < 0.f) break;
        }
        taken[static_cast<size_t>(pick)] = 1;
        left -= p[pick];
        idx[i] = pick;
      }
    }, 256);
  }
  for (float& g : r.gate) g = 1.f;
}

void ReinforceRouter::set_reward(const float* reward, const Routing& r) {
  const int T = r.T;
  MOE_CHECK(T * E == static_cast<int>(prob.numel()), "reinforce router: set_reward for " + std::to_string(T) +
                                                        " tokens after a forward of another size");
  double sum = 0.0;
  int n = 0;
  for (int t = 0; t < T; ++t)
    if (std::isfinite(reward[t])) {
      sum += reward[t];
      ++n;
    }
  advantage_.assign(static_cast<size_t>(T), 0.f);
  losses_.rl = 0.f;
  if (n == 0) return;
  const double mean = sum / n;
  const double b = baseline[1] > 0.f ? static_cast<double>(baseline[0]) : mean;
  advantage_scale_ = cfg.reinforce_coef / static_cast<float>(n);
  double rl = 0.0;
  for (int t = 0; t < T; ++t) {
    if (!std::isfinite(reward[t])) continue;
    const float a = static_cast<float>(reward[t] - b);
    advantage_[static_cast<size_t>(t)] = a;
    double logp = 0.0;
    for (int i = 0; i < k; ++i) logp += std::log(std::max(1e-30f, prob[static_cast<size_t>(t) * E + r.expert[static_cast<size_t>(t) * k + i]]));
    rl -= advantage_scale_ * a * logp;
  }
  losses_.rl = static_cast<float>(rl);
  reward_sum_ += mean;
  ++reward_batches_;
}

void ReinforceRouter::after_step() {
  if (reward_batches_ == 0) return;
  const double m = reward_sum_ / reward_batches_;
  if (baseline[1] > 0.f) {
    baseline[0] = static_cast<float>(cfg.reinforce_baseline_decay * static_cast<double>(baseline[0]) + (1.0 - cfg.reinforce_baseline_decay) * m);
  } else {
    baseline[0] = static_cast<float>(m);
    baseline[1] = 1.f;
  }
  reward_sum_ = 0.0;
  reward_batches_ = 0;
}

void ReinforceRouter::backward(const float* xr, const Routing& r, const float* dgate, float* dlogits, float* dxr) {
  // d loss_rl / d s_t = −c/n · A_t · (Σ_{i∈I} onehot(e_i) − k·π_t).
  if (advantage_.size() == static_cast<size_t>(r.T)) {
    parallel_for(static_cast<size_t>(r.T), [&](size_t t) {
      const float a = advantage_scale_ * advantage_[t];
      if (a == 0.f) return;
      const float* p = prob.data() + t * E;
      for (int e = 0; e < E; ++e) dlogits[t * E + e] += a * static_cast<float>(k) * p[e];
      for (int i = 0; i < k; ++i) dlogits[t * E + r.expert[t * k + i]] -= a;
    }, 256);
  }
  Router::backward(xr, r, dgate, dlogits, dxr);
}

}  // namespace moe
