#include "core/vmath.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "core/simd.h"

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

// The reductions below are vectorised by hand (AVX-512): 16 lane sums in the order of the code, then
// hsum, so results are the same on every run and thread count. Short rows (a causal attention row,
// a router's 8 logits) take the vector path too, with their last vector masked: GCC's `omp simd`
// loops ran a scalar tail of up to 15 values with exp's whole polynomial, and summed the lanes through
// the stack, which took most of the time of rows under 128.
//
// The max is exact in any order. GCC 12 leaves the `omp simd reduction(max)` loop scalar (one vmaxss a
// value, each waiting on the last), which made it the slowest part of a softmax over a vocabulary.
static float max_of(const float* x, int n) {
  float m = x[0];
#if defined(__AVX512F__)
  // max(x, m) lane by lane is std::max(m, x): m unless x is larger (a NaN x leaves m). Lanes past n
  // hold x[0] (fewer than 16 values) or values already seen (the last, overlapping vector).
  const __m512 first = _mm512_set1_ps(m);
  __m512 m0 = first, m1 = first, m2 = first, m3 = first;
  if (n < 16) {
    m0 = _mm512_maskz_max_ps(0xFFFF, _mm512_mask_loadu_ps(first, first_lanes(n), x), m0);
  } else {
    int i = 0;
    for (; i + 64 <= n; i += 64) {
      m0 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i), m0);
      m1 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i + 16), m1);
      m2 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i + 32), m2);
      m3 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i + 48), m3);
    }
    for (; i + 16 <= n; i += 16) m0 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + i), m0);
    if (i < n) m1 = _mm512_maskz_max_ps(0xFFFF, _mm512_loadu_ps(x + n - 16), m1);
  }
  alignas(64) float lanes[16];
  m0 = _mm512_maskz_max_ps(0xFFFF, m0, m1);
  m2 = _mm512_maskz_max_ps(0xFFFF, m2, m3);
  _mm512_store_ps(lanes, _mm512_maskz_max_ps(0xFFFF, m0, m2));
  for (float v : lanes) m = std::max(m, v);
#else
  for (int i = 1; i < n; ++i) m = std::max(m, x[i]);
#endif
  return m;
}

#if defined(__AVX512F__)
// out[i] = exp(in[i] − c) for i < n, 16 at a time with the last vector masked (every value takes
// the same vector path, whatever n); returns Σ out in the lanes' order (16 lane sums, then hsum).
// out may be null (the sum alone).
static float exp_minus_sum(const float* in, float c, float* out, int n) {
  const __m512 cv = _mm512_set1_ps(c);
  __m512 acc = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, in + i), cv));
    if (out) _mm512_mask_storeu_ps(out + i, m, e);
    acc = _mm512_mask_add_ps(acc, m, acc, e);
  }
  return hsum(acc);
}
#else
static float exp_minus_sum(const float* in, float c, float* out, int n) {
  float s = 0.f;
  if (out) {
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; ++i) {
      out[i] = exp_approx(in[i] - c);
      s += out[i];
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; ++i) s += exp_approx(in[i] - c);
  }
  return s;
}
#endif

void exp_minus(const float* in, float c, float* out, int n) { exp_minus_sum(in, c, out, n); }

void softmax(const float* in, float* out, int n, float* lse, float scale) {
  const float m = max_of(in, n);
  const float s = exp_minus_sum(in, m, out, n);
  const float inv = scale / s;
#pragma omp simd
  for (int i = 0; i < n; ++i) out[i] *= inv;
  if (lse) *lse = m + std::log(s);
}

float logsumexp(const float* x, int n) {
  const float m = max_of(x, n);
  return m + std::log(exp_minus_sum(x, m, nullptr, n));
}

void softmax_backward(const float* p, const float* dp, float* ds, int n) {
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p + i), _mm512_maskz_loadu_ps(m, dp + i), acc);  // 0·0 past n
  }
  const __m512 dot = _mm512_set1_ps(hsum(acc));
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + i), dot);
    _mm512_mask_storeu_ps(ds + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + i), d));
  }
#else
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int i = 0; i < n; ++i) dot += p[i] * dp[i];
#pragma omp simd
  for (int i = 0; i < n; ++i) ds[i] = p[i] * (dp[i] - dot);
#endif
}

}  // namespace moe
