// sigmoid_bias.cpp — DeepSeek-V3's sigmoid gating with a selection bias that balances the load
// without an auxiliary loss (the bias moves in after_step, by the loads of the step, not by gradient).
#include <algorithm>
#include <vector>

#include "core/parallel.h"
#include "core/vmath.h"
#include "moe/routers/routers.h"

namespace moe {

SigmoidBiasRouter::SigmoidBiasRouter(const MoeConfig& c) : Router(c), bias({E}), load_(static_cast<size_t>(E), 0) {}

void SigmoidBiasRouter::route(int T, const FfnContext& ctx, Routing& r) {
  sig.resize({T, E});
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* s = logits.data() + t * E;
    float* a = sig.data() + t * E;
    float* p = prob.data() + t * E;
    thread_local std::vector<float> scores_buf;
    scores_buf.resize(static_cast<size_t>(E));
    float* scores = scores_buf.data();
    float total = 0.f;
    for (int e = 0; e < E; ++e) {
      a[e] = sigmoid(s[e]);
      total += a[e];
      scores[e] = a[e] + bias[static_cast<size_t>(e)];
    }
    for (int e = 0; e < E; ++e) p[e] = a[e] / total;
    int32_t* idx = r.expert.data() + t * k;
    float* g = r.gate.data() + t * k;
    select_topk(scores, idx);
    float sum = 0.f;
    for (int i = 0; i < k; ++i) sum += a[idx[i]];
    for (int i = 0; i < k; ++i) g[i] = cfg.routed_scaling_factor * a[idx[i]] / sum;
  }, 256);
  if (ctx.training)
    for (int32_t e : r.expert) ++load_[static_cast<size_t>(e)];
}

void SigmoidBiasRouter::gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const {
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* a = sig.data() + t * E;
    const int32_t* idx = r.expert.data() + t * k;
    const float* dg = dgate + t * k;
    float sum = 0.f, dot = 0.f;
    for (int i = 0; i < k; ++i) {
      sum += a[idx[i]];
      dot += dg[i] * a[idx[i]];
    }
    const float c = cfg.routed_scaling_factor / sum;
    for (int i = 0; i < k; ++i) {
      const float ai = a[idx[i]];
      const float da = c * (dg[i] - dot / sum);
      dlogits[t * E + idx[i]] += da * ai * (1.f - ai);
    }
  }, 256);
}

void SigmoidBiasRouter::prob_backward(const float* dprob, float* dlogits, int T) const {
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* a = sig.data() + t * E;
    const float* p = prob.data() + t * E;
    const float* dp = dprob + t * E;
    float total = 0.f, dot = 0.f;
    for (int e = 0; e < E; ++e) {
      total += a[e];
      dot += dp[e] * p[e];
    }
    for (int e = 0; e < E; ++e) dlogits[t * E + e] += (dp[e] - dot) / total * a[e] * (1.f - a[e]);
  }, 256);
}

void SigmoidBiasRouter::after_step() {
  if (distributed(comm)) comm->allreduce_sum(load_.data(), load_.size());  // the loads of the whole batch
  double mean = 0.0;
  for (int64_t c : load_) mean += static_cast<double>(c);
  mean /= E;
  for (int e = 0; e < E; ++e) {
    const double diff = mean - static_cast<double>(load_[static_cast<size_t>(e)]);
    bias[static_cast<size_t>(e)] += cfg.bias_update_speed * static_cast<float>((diff > 0) - (diff < 0));
  }
  std::fill(load_.begin(), load_.end(), 0);
}

}  // namespace moe
