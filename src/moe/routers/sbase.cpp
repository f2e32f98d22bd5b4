// sbase.cpp — S-BASE (Clark et al. 2022): balanced routing by Sinkhorn normalisation in place of
// BASE's exact assignment.
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "core/vmath.h"
#include "moe/routers/routers.h"

namespace moe {

int sinkhorn(const float* s, int T, int E, float* out, int max_iter, float tol) {
  // C = exp(s − rowmax): a row's shift is a row scaling, which d0 absorbs, so it changes nothing but
  // keeps exp in range. out holds C while iterating.
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* st = s + t * E;
    float m = st[0];
    for (int e = 1; e < E; ++e) m = std::max(m, st[e]);
    for (int e = 0; e < E; ++e) out[t * E + e] = std::exp(st[e] - m);
  }, 256);
  std::vector<double> d0(static_cast<size_t>(T)), d1(static_cast<size_t>(E), 1.0), col(static_cast<size_t>(E));
  int it = 0;
  while (it < max_iter) {
    ++it;
    parallel_for(static_cast<size_t>(T), [&](size_t t) {
      double acc = 0.0;
      for (int e = 0; e < E; ++e) acc += static_cast<double>(out[t * E + e]) * d1[static_cast<size_t>(e)];
      d0[t] = 1.0 / (static_cast<double>(T) * acc);
    }, 256);
    std::fill(col.begin(), col.end(), 0.0);
    for (int t = 0; t < T; ++t)
      for (int e = 0; e < E; ++e) col[static_cast<size_t>(e)] += d0[static_cast<size_t>(t)] * out[static_cast<size_t>(t) * E + e];
    double delta = 0.0;
    for (int e = 0; e < E; ++e) {
      const double next = 1.0 / (static_cast<double>(E) * col[static_cast<size_t>(e)]);
      delta += std::fabs(next - d1[static_cast<size_t>(e)]);
      d1[static_cast<size_t>(e)] = next;
    }
    if (delta / E < tol) break;
  }
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    for (int e = 0; e < E; ++e)
      out[t * E + e] = static_cast<float>(static_cast<double>(T) * d0[t] * out[t * E + e] * d1[static_cast<size_t>(e)]);
  }, 256);
  return it;
}

void SBaseRouter::route(int T, const FfnContext& ctx, Routing& r) {
  softmax_rows(T);  // the affinity P of the balance losses
  const bool balance = ctx.training && !ctx.causal;
  if (balance) {
    balanced.resize({T, E});
    iterations = sinkhorn(logits.data(), T, E, balanced.data());
  }
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* s = logits.data() + t * E;
    int32_t* idx = r.expert.data() + t * k;
    float* g = r.gate.data() + t * k;
    select_topk(balance ? balanced.data() + t * E : s, idx);
    if (k == 1) {
      g[0] = sigmoid(s[idx[0]]);
    } else {
      for (int i = 0; i < k; ++i) g[i] = s[idx[i]];
      softmax(g, g, k);
    }
  }, 256);
}

void SBaseRouter::gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const {
  if (k > 1) {
    restricted_softmax_backward(T, r, dgate, dlogits);
    return;
  }
  sigmoid_gate_backward(T, r, dgate, dlogits);  // g = σ(s_i)
}

}  // namespace moe
