// vmath.h — element-wise and row-wise math on float arrays, written as plain loops the compiler
// vectorises (AVX-512 here). exp is a polynomial of our own so that results do not depend on libm's
// version; every element goes through the same operations, vectorised or not, so results are
// bit-identical whatever the thread count or the alignment.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moe {

// exp(x) to ~2 ulp for x in [-87, 88]; 0 below, +inf-free clamp above.
inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;  // Cody-Waite: ln2 = hi + lo
  r = r - n * 1.428606765330187e-06f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float silu(float x) { return x * sigmoid(x); }
inline float softplus(float x) { return x > 20.f ? x : std::log1p(exp_approx(x)); }
inline float normal_cdf(float x) { return 0.5f * std::erfc(-x * 0.70710678118654752f); }
inline float normal_pdf(float x) { return 0.39894228040143268f * exp_approx(-0.5f * x * x); }

// h[i] = silu(a[i]) * b[i]  (the SwiGLU product)
void swiglu(const float* a, const float* b, float* h, size_t n);
// Backward of h = silu(a) * b given dh: da[i] = dh*b*silu'(a), db[i] = dh*silu(a). In place allowed
// (da may alias a, db may alias b).
void swiglu_backward(const float* a, const float* b, const float* dh, float* da, float* db, size_t n);

// Σ a[i]·b[i] (vectorised: a fixed lane split, so the same on every run of one build).
inline float dot(const float* a, const float* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
// y[i] += a·x[i]
inline void axpy(float a, const float* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// Row softmax of n values, in place safe (out may equal in); with lse, *lse = log Σ exp(in) (from the
// same max and sum). With scale, out = scale · softmax(in), in the same pass (cross-entropy's 1/n).
void softmax(const float* in, float* out, int n, float* lse = nullptr, float scale = 1.f);
float logsumexp(const float* x, int n);
// out[i] = exp_approx(in[i] − c) for i < n (in place safe), vectorised without a scalar tail.
void exp_minus(const float* in, float c, float* out, int n);
// Given p = softmax(s) and dp, ds = p ⊙ (dp − Σ p·dp). ds may alias dp.
void softmax_backward(const float* p, const float* dp, float* ds, int n);

}  // namespace moe
