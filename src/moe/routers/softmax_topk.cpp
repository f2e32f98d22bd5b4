// softmax_topk.cpp — the router of Switch, GShard, Qwen2-MoE and DeepSeek-V2: top k of p = softmax(s),
// gates p_i (optionally renormalised over the chosen experts).
#include <vector>

#include "core/parallel.h"
#include "core/vmath.h"
#include "moe/routers/routers.h"

namespace moe {

// ---- softmax_topk (Switch, GShard, Qwen2-MoE, DeepSeek-V2): p = softmax(s), top-k of p ----------

void SoftmaxTopkRouter::route(int T, const FfnContext&, Routing& r) {
  softmax_rows(T);
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* p = prob.data() + t * E;
    int32_t* idx = r.expert.data() + t * k;
    float* g = r.gate.data() + t * k;
    select_topk(p, idx);
    float sum = 0.f;
    for (int i = 0; i < k; ++i) sum += (g[i] = p[idx[i]]);
    if (cfg.norm_topk_prob)
      for (int i = 0; i < k; ++i) g[i] /= sum;
  }, 256);
}

void SoftmaxTopkRouter::gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const {
  if (!cfg.norm_topk_prob) {  // g_i = p_i
    softmax_slots_backward(T, r, dgate, dlogits);
    return;
  }
  // g_i = p_i / S, S = Σ_I p: dp_i = (dg_i − Σ_j g_j·dg_j) / S.
  std::vector<float> dp(static_cast<size_t>(T) * k);
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* p = prob.data() + t * E;
    const int32_t* idx = r.expert.data() + t * k;
    const float* g = r.gate.data() + t * k;
    const float* dg = dgate + t * k;
    float sum = 0.f, dot = 0.f;
    for (int i = 0; i < k; ++i) { sum += p[idx[i]]; dot += g[i] * dg[i]; }
    for (int i = 0; i < k; ++i) dp[t * k + i] = (dg[i] - dot) / sum;
  }, 256);
  softmax_slots_backward(T, r, dp.data(), dlogits);
}

}  // namespace moe
