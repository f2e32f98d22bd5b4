#include "nn/cross_entropy.h"

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/vmath.h"

namespace moe {

double cross_entropy(const float* logits, const int32_t* targets, int T, int V, float* dlogits, float* losses) {
  int n = 0;
  for (int t = 0; t < T; ++t) {
    if (targets[t] == kIgnoreIndex) continue;
    if (targets[t] < 0 || targets[t] >= V)
      fail("cross_entropy: target " + std::to_string(targets[t]) + " at position " + std::to_string(t) +
           " is outside the vocabulary of " + std::to_string(V));
    ++n;
  }
  std::vector<float> loss(static_cast<size_t>(T), 0.f);
  const float inv_n = n > 0 ? 1.f / static_cast<float>(n) : 0.f;
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* z = logits + t * V;
    float* dz = dlogits ? dlogits + t * V : nullptr;
    if (targets[t] == kIgnoreIndex) {
      if (dz) std::memset(dz, 0, sizeof(float) * V);
      return;
    }
    const float zt = z[targets[t]];
    float lse;
    if (dz) {  // (softmax − onehot)/n: one exp a logit, dz may be z itself
      softmax(z, dz, V, &lse, inv_n);
      dz[targets[t]] -= inv_n;
    } else {
      lse = logsumexp(z, V);
    }
    loss[t] = lse - zt;
  }, 16);
  double sum = 0.0;
  for (int t = 0; t < T; ++t) sum += loss[static_cast<size_t>(t)];
  if (losses) std::memcpy(losses, loss.data(), sizeof(float) * T);
  return n > 0 ? sum / n : 0.0;
}

double distill_kl(const float* logits, const float* teacher, const int32_t* targets, int T, int V, float weight,
                  float* dlogits) {
  int n = 0;
  for (int t = 0; t < T; ++t) n += targets[t] != kIgnoreIndex;
  if (n == 0) return 0.0;
  std::vector<double> kl(static_cast<size_t>(T), 0.0);
  const float scale = weight / static_cast<float>(n);
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    if (targets[t] == kIgnoreIndex) return;
    const float* z = logits + t * V;
    const float* zt = teacher + t * V;
    const float lse = logsumexp(z, V), lse_t = logsumexp(zt, V);
    double sum = 0.0;
    for (int v = 0; v < V; ++v) {
      const float log_q = zt[v] - lse_t, log_p = z[v] - lse;
      const float q = exp_approx(log_q);
      sum += static_cast<double>(q) * (static_cast<double>(log_q) - log_p);
      if (dlogits) dlogits[t * V + v] += scale * (exp_approx(log_p) - q);
    }
    kl[t] = sum;
  }, 16);
  double sum = 0.0;
  for (double x : kl) sum += x;
  return static_cast<double>(weight) * sum / n;
}

}  // namespace moe
