#include "nn/rmsnorm.h"

#include <algorithm>
#include <cmath>

#include "core/parallel.h"

namespace moe {

RMSNorm::RMSNorm(int dim, float epsilon) : d(dim), eps(epsilon), w({dim}), dw({dim}) { w.fill(1.f); }

void RMSNorm::forward(const float* x, int T, float* y) {
  x_ = x;
  T_ = T;
  rstd.resize({T});
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* wd = w.data();  // a local pointer: GCC does not vectorise a loop that loads it through w or the closure
    const float* xt = x + t * d;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int j = 0; j < d; ++j) ss += xt[j] * xt[j];
    const float r = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
    rstd[t] = r;
    float* yt = y + t * d;
#pragma omp simd
    for (int j = 0; j < d; ++j) yt[j] = xt[j] * r * wd[j];
  }, 64);
}

void RMSNorm::backward(const float* dy, float* dx) {
  const int T = T_;
  // dx = r·(dy⊙w − x·r²·mean(dy⊙w⊙x))
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* wd = w.data();  // as in forward
    const float* xt = x_ + t * d;
    const float* dyt = dy + t * d;
    const float r = rstd[t];
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < d; ++j) dot += dyt[j] * wd[j] * xt[j];
    const float c = r * r * dot / static_cast<float>(d);
    float* dxt = dx + t * d;
#pragma omp simd
    for (int j = 0; j < d; ++j) dxt[j] = r * (dyt[j] * wd[j] - xt[j] * c);
  }, 64);
  // dw_j = Σ_t dy·x·r: each task owns a tile of columns and sums tokens in order, so the result does not
  // depend on the thread count; the tile's columns are summed side by side (one row's tile at a time).
  constexpr int kTile = 64;
  parallel_for(static_cast<size_t>((d + kTile - 1) / kTile), [&](size_t tile) {
    const int j0 = static_cast<int>(tile) * kTile, n = std::min(kTile, d - j0);
    float s[kTile] = {};
    for (int t = 0; t < T; ++t) {
      const float* dyt = dy + static_cast<size_t>(t) * d + j0;
      const float* xt = x_ + static_cast<size_t>(t) * d + j0;
      const float r = rstd[t];
#pragma omp simd
      for (int j = 0; j < n; ++j) s[j] += dyt[j] * xt[j] * r;
    }
    for (int j = 0; j < n; ++j) dw[j0 + j] += s[j];
  }, 1);
}

}  // namespace moe
