// simd.h — AVX-512 helpers shared by the hand-vectorised kernels (core/vmath.cpp, core/bf16.cpp,
// core/packed.cpp): a horizontal sum in a fixed order, and exp_approx (core/vmath.h) on 16 lanes.
#pragma once
#include <immintrin.h>

namespace moe {

#if defined(__AVX512F__)
// The sum of v's 16 lanes in the order of _mm512_reduce_add_ps (halves, quarters, pairs), without its
// unmasked extract, which GCC 12 reports as reading an uninitialised placeholder (GCC bug 105593).
// hsum8 is its second half: the sum of 8 lanes.
inline float hsum8(__m256 s8) {
  const __m128 s4 = _mm_add_ps(_mm256_extractf128_ps(s8, 1), _mm256_castps256_ps128(s8));
  const __m128 s2 = _mm_add_ps(s4, _mm_shuffle_ps(s4, s4, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(s2) + _mm_cvtss_f32(_mm_shuffle_ps(s2, s2, _MM_SHUFFLE(1, 1, 1, 1)));
}
inline float hsum(__m512 v) {
  const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 1));
  const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 0));
  return hsum8(_mm256_add_ps(hi, lo));
}

// exp_approx of each lane, step for step: the same clamp, Cody-Waite reduction and polynomial, with
// the fused multiply-adds GCC forms from the scalar expression (test_core checks every lane against
// the scalar function bit for bit). The clamps keep a NaN lane NaN, as the scalar comparisons do.
inline __m512 exp16(__m512 x) {
  constexpr __mmask16 all = 0xFFFF;  // the zero-masked forms: see hsum
  x = _mm512_maskz_min_ps(all, _mm512_set1_ps(88.3f), _mm512_maskz_max_ps(all, _mm512_set1_ps(-87.3f), x));
  const __m512 n = _mm512_maskz_roundscale_ps(all, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                              _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_maskz_slli_epi32(all, _mm512_add_epi32(_mm512_maskz_cvttps_epi32(all, n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// The mask of the first n lanes (n ≤ 16).
inline __mmask16 first_lanes(int n) { return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1); }
#endif

}  // namespace moe
