#include "core/small_gemm.h"

#include <algorithm>
#include <array>
#include <utility>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace moe {

namespace {

constexpr int kRows = 6;      // rows of C per register tile
constexpr int kVectors = 4;   // 16-float vectors of C per tile row: 64 columns

#if defined(__AVX512F__)
// One tile: MR rows by NV vectors of C, the last vector masked to the columns that exist. MR·NV
// accumulators, NV loads of B and MR broadcasts of A per step of p: 24 + 4 + 1 of the 32 registers.
template <int MR, int NV>
void tile(int k, float alpha, const float* A, std::ptrdiff_t a_row, std::ptrdiff_t a_col, const float* B, std::ptrdiff_t ldb,
          float* C, std::ptrdiff_t ldc, bool accumulate, __mmask16 last) {
  // Every loop over r and v unrolled, so that acc and bv live in registers.
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int p = 0; p < k; ++p) {
    const float* b = B + p * ldb;
    __m512 bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV - 1; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
    bv[NV - 1] = _mm512_maskz_loadu_ps(last, b + 16 * (NV - 1));
    const float* a = A + p * a_col;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r * a_row]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
  }
  const __m512 al = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? last : static_cast<__mmask16>(0xFFFF);
      __m512 out = _mm512_mul_ps(al, acc[r][v]);
      if (accumulate) out = _mm512_add_ps(_mm512_maskz_loadu_ps(m, c + 16 * v), out);
      _mm512_mask_storeu_ps(c + 16 * v, m, out);
    }
  }
}

using Tile = void (*)(int, float, const float*, std::ptrdiff_t, std::ptrdiff_t, const float*, std::ptrdiff_t, float*,
                      std::ptrdiff_t, bool, __mmask16);

template <int MR, int... NV>
constexpr std::array<Tile, kVectors> row_of(std::integer_sequence<int, NV...>) {
  return {&tile<MR, NV + 1>...};
}
template <int... MR>
constexpr std::array<std::array<Tile, kVectors>, kRows> table_of(std::integer_sequence<int, MR...>) {
  return {row_of<MR + 1>(std::make_integer_sequence<int, kVectors>{})...};
}
constexpr auto kTiles = table_of(std::make_integer_sequence<int, kRows>{});
#endif

}  // namespace

void small_gemm(int m, int n, int k, float alpha, const float* A, std::ptrdiff_t a_row, std::ptrdiff_t a_col,
                const float* B, std::ptrdiff_t ldb, float* C, std::ptrdiff_t ldc, bool accumulate) {
  // Column panels outside, row tiles inside: a panel of B (k, 64) stays in L1 while A's rows pass.
  for (int j0 = 0; j0 < n; j0 += 16 * kVectors) {
    const int nc = std::min(16 * kVectors, n - j0);
#if defined(__AVX512F__)
    const int nv = (nc + 15) / 16;
    const __mmask16 last = nc % 16 == 0 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (nc % 16)) - 1);
    for (int i0 = 0; i0 < m; i0 += kRows) {
      const int mr = std::min(kRows, m - i0);
      kTiles[mr - 1][nv - 1](k, alpha, A + i0 * a_row, a_row, a_col, B + j0, ldb, C + i0 * ldc + j0, ldc, accumulate, last);
    }
#else
    for (int i = 0; i < m; ++i)
      for (int j = j0; j < j0 + nc; ++j) {
        float s = 0.f;
        for (int p = 0; p < k; ++p) s += A[i * a_row + p * a_col] * B[p * ldb + j];
        C[i * ldc + j] = accumulate ? C[i * ldc + j] + alpha * s : alpha * s;
      }
#endif
  }
}

#if defined(__AVX512F__)
namespace {

// A whole 16 × 16 block in registers: pairs, then pairs of pairs, then 128-bit lanes, then halves. The
// zero-masked forms with all lanes set are the plain instructions; GCC 12 reports the unmasked ones as
// reading an uninitialised placeholder (see widen_bf16x16 in core/bf16.h).
void transpose16x16(const float* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_ps(0xFFFF, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_ps(0xFFFF, r[i], r[i + 1]);
  }
  auto lo = [](__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xFF, _mm512_castps_pd(a), _mm512_castps_pd(b))); };
  auto hi = [](__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xFF, _mm512_castps_pd(a), _mm512_castps_pd(b))); };
  for (int i = 0; i < 16; i += 4) {
    r[i] = lo(t[i], t[i + 2]);
    r[i + 1] = hi(t[i], t[i + 2]);
    r[i + 2] = lo(t[i + 1], t[i + 3]);
    r[i + 3] = hi(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_maskz_shuffle_f32x4(0xFFFF, r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_maskz_shuffle_f32x4(0xFFFF, r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_maskz_shuffle_f32x4(0xFFFF, t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_maskz_shuffle_f32x4(0xFFFF, t[j], t[j + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ldd, r[i]);
}

}  // namespace
#endif

void transpose_block(const float* src, std::ptrdiff_t lds, int rows, int cols, float* dst, std::ptrdiff_t ldd) {
  constexpr int kBlock = 16;  // 16 × 16 blocks: each source and destination line is used whole
  for (int r0 = 0; r0 < rows; r0 += kBlock)
    for (int c0 = 0; c0 < cols; c0 += kBlock) {
      const int r1 = std::min(rows, r0 + kBlock), c1 = std::min(cols, c0 + kBlock);
#if defined(__AVX512F__)
      if (r1 - r0 == kBlock && c1 - c0 == kBlock) {
        transpose16x16(src + r0 * lds + c0, lds, dst + c0 * ldd + r0, ldd);
        continue;
      }
#endif
      for (int c = c0; c < c1; ++c)
        for (int r = r0; r < r1; ++r) dst[c * ldd + r] = src[r * lds + c];
    }
}

}  // namespace moe
