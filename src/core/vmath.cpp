#include "core/vmath.h"

#include <immintrin.h>

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

// The reductions below are vectorised with `omp simd reduction`: the summation order is that of the
// SIMD lanes, fixed by the code, so results are the same on every run and thread count.
//
// The max is exact in any order. GCC 12 leaves the `omp simd reduction(max)` loop scalar (one vmaxss a
// value, each waiting on the last), which made it the slowest part of a softmax over a vocabulary.
static float max_of(const float* x, int n) {
  float m = x[0];
  int i = 1;
#if defined(__AVX512F__)
  if (n >= 16) {
    i = 0;  // x[0] again: harmless for a max
    // max(x, m) lane by lane is std::max(m, x): m unless x is larger (a NaN x leaves m).
    __m512 m0 = _mm512_set1_ps(m), m1 = m0, m2 = m0, m3 = m0;
    for (; i + 64 <= n; i += 64) {
      m0 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i), m0);
      m1 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i + 16), m1);
      m2 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i + 32), m2);
      m3 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i + 48), m3);
    }
    for (; i + 16 <= n; i += 16) m0 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i), m0);
    alignas(64) float lanes[16];
    m0 = _mm512_maskz_max_ps(0xFFFF, m0, m1);
    m2 = _mm512_maskz_max_ps(0xFFFF, m2, m3);
    _mm512_store_ps(lanes, _mm512_maskz_max_ps(0xFFFF, m0, m2));
    for (float v : lanes) m = std::max(m, v);
  }
#endif
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

void softmax(const float* in, float* out, int n, float* lse) {
  const float m = max_of(in, n);
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) {
    out[i] = exp_approx(in[i] - m);
    s += out[i];
  }
  const float inv = 1.0f / s;
#pragma omp simd
  for (int i = 0; i < n; ++i) out[i] *= inv;
  if (lse) *lse = m + std::log(s);
}

float logsumexp(const float* x, int n) {
  const float m = max_of(x, n);
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += exp_approx(x[i] - m);
  return m + std::log(s);
}

void softmax_backward(const float* p, const float* dp, float* ds, int n) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int i = 0; i < n; ++i) dot += p[i] * dp[i];
#pragma omp simd
  for (int i = 0; i < n; ++i) ds[i] = p[i] * (dp[i] - dot);
}

}  // namespace moe
