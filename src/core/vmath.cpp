#include "core/vmath.h"

#include <algorithm>

namespace moe {

void swiglu(const float* a, const float* b, float* h, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) h[i] = silu(a[i]) * b[i];
}

void swiglu_backward(const float* a, const float* b, const float* dh, float* da, float* db, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const float x = a[i], sg = sigmoid(x), y = b[i], g = dh[i];
    const float sl = x * sg;
    da[i] = g * y * sg * (1.0f + x * (1.0f - sg));
    db[i] = g * sl;
  }
}

void softmax(const float* in, float* out, int n) {
  float m = in[0];
  for (int i = 1; i < n; ++i) m = std::max(m, in[i]);
  float s = 0.f;
  for (int i = 0; i < n; ++i) {
    out[i] = exp_approx(in[i] - m);
    s += out[i];
  }
  const float inv = 1.0f / s;
  for (int i = 0; i < n; ++i) out[i] *= inv;
}

float logsumexp(const float* x, int n) {
  float m = x[0];
  for (int i = 1; i < n; ++i) m = std::max(m, x[i]);
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += exp_approx(x[i] - m);
  return m + std::log(s);
}

void softmax_backward(const float* p, const float* dp, float* ds, int n) {
  float dot = 0.f;
  for (int i = 0; i < n; ++i) dot += p[i] * dp[i];
  for (int i = 0; i < n; ++i) ds[i] = p[i] * (dp[i] - dot);
}

}  // namespace moe
