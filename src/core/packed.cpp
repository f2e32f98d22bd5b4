#include "core/packed.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <string>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"

namespace moe {

double bytes_per_weight(WeightFormat f) {
  switch (f) {
    case WeightFormat::fp32: return 4.0;
    case WeightFormat::bf16: return 2.0;
    case WeightFormat::q8_0: return 34.0 / 32.0;
  }
  return 4.0;
}

namespace {

// A Q8_0 scale in fp32 (one instruction with F16C).
inline float scale_of(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return half_to_float(h);
#endif
}

}  // namespace

float quantize_activation_block(const float* x, int8_t* q) {
#if defined(__AVX512F__)
  const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  constexpr __mmask16 all = 0xFFFF;  // the zero-masked forms: see hsum (core/simd.h)
  const __m512 m = _mm512_maskz_max_ps(all, _mm512_abs_ps(a), _mm512_abs_ps(b));
  const __m256 m8 = _mm256_max_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(m), 1)),
                                  _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(m), 0)));
  __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m8, 1), _mm256_castps256_ps128(m8));
  m4 = _mm_max_ps(m4, _mm_shuffle_ps(m4, m4, _MM_SHUFFLE(1, 0, 3, 2)));
  const float amax = std::max(_mm_cvtss_f32(m4), _mm_cvtss_f32(_mm_shuffle_ps(m4, m4, _MM_SHUFFLE(1, 1, 1, 1))));
#else
  float amax = 0.f;
  for (int j = 0; j < kQ8Block; ++j) amax = std::max(amax, std::fabs(x[j]));
#endif
  const float id = amax > 0.f ? 127.f / amax : 0.f;
#if defined(__AVX512F__)
  // vcvtps2dq rounds to nearest even (the default rounding mode), as nearbyint does below.
  const __m512 s = _mm512_set1_ps(id);
  const auto round8 = [&](__m512 v) { return _mm512_maskz_cvtsepi32_epi8(all, _mm512_maskz_cvtps_epi32(all, _mm512_mul_ps(v, s))); };
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), round8(a));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), round8(b));
#else
  for (int j = 0; j < kQ8Block; ++j) q[j] = static_cast<int8_t>(std::clamp(std::nearbyint(x[j] * id), -127.f, 127.f));
#endif
  return amax / 127.f;
}

// Q8_0 weights are stored a group of 16 consecutive blocks at a time (blocks counted along the rows,
// row after row), each group's 512 bytes as 8 slices of 64: slice j holds bytes 4j..4j+3 of each of the
// 16 blocks, block l at bytes 4l..4l+3. vpdpbusd adds 4 byte products into each 32-bit lane, so 8 of
// them, one a slice, leave lane l with block l's whole sum: 16 blocks' sums a vector, with one
// conversion and one multiply by their 16 scales, and no shuffles. The last group is padded with zero
// weights (stored as 128) and zero scales.
constexpr int kQ8Group = 16;                      // blocks a group
constexpr int kQ8GroupBytes = kQ8Group * kQ8Block;  // 512
inline size_t q8_offset(size_t block, int i) {
  return block / kQ8Group * kQ8GroupBytes + static_cast<size_t>(i / 4) * 64 + block % kQ8Group * 4 + static_cast<size_t>(i % 4);
}

// The M rows of x (M, K) rounded for a Q8_0 product: int8 values and an fp32 scale per block. For the
// dot products each row is laid out as the weights' groups read it: group g's lane l meets block
// (16·g + l) mod nb of x, a pattern that repeats every P = nb / gcd(nb, 16) groups. Each of a row's P
// patterns holds the 8 slices of x's bytes, the 16 blocks' scales, and per lane the correction of the
// weights' +128 offset, −128·Σ q, where vpdpbusd's sum of the block starts.
struct PackedMatrix::Q8Rows {
  int K = 0, nb = 0, P = 0;
  std::vector<int8_t> q;        // (M, K)
  std::vector<float> d;         // (M, K / 32)
  std::vector<int8_t> xv;       // dots: (M, P, 512) the slices
  std::vector<float> xs;        // dots: (M, P, 16) the lanes' scales
  std::vector<int32_t> xbase;   // dots: (M, P, 16) the lanes' corrections
  void quantize(const float* x, int M, int cols, bool for_dots) {
    K = cols;
    nb = cols / kQ8Block;
    const size_t blocks = static_cast<size_t>(M) * nb;
    q.resize(static_cast<size_t>(M) * K);
    d.resize(blocks);
    for (size_t b = 0; b < blocks; ++b) d[b] = quantize_activation_block(x + b * kQ8Block, q.data() + b * kQ8Block);
    if (!for_dots) return;
    P = nb / std::gcd(nb, kQ8Group);
    const size_t patterns = static_cast<size_t>(M) * P;
    xv.resize(patterns * kQ8GroupBytes);
    xs.resize(patterns * kQ8Group);
    xbase.resize(patterns * kQ8Group);
    thread_local std::vector<int32_t> sums;  // −128·Σ q of each block
    sums.resize(blocks);
    for (size_t b = 0; b < blocks; ++b) {
      int sum = 0;
      for (int i = 0; i < kQ8Block; ++i) sum += q[b * kQ8Block + i];
      sums[b] = -128 * sum;
    }
    for (int m = 0; m < M; ++m)
      for (int p = 0; p < P; ++p) {
        const size_t mp = static_cast<size_t>(m) * P + p;
        for (int l = 0; l < kQ8Group; ++l) {
          const size_t b = static_cast<size_t>(m) * nb + (kQ8Group * p + l) % nb;
          for (int j = 0; j < kQ8Block / 4; ++j)  // bytes 4j..4j+3 of the block to slice j, lane l
            std::memcpy(xv.data() + mp * kQ8GroupBytes + q8_offset(static_cast<size_t>(l), 4 * j), q.data() + b * kQ8Block + 4 * j, 4);
          xs[mp * kQ8Group + l] = d[b];
          xbase[mp * kQ8Group + l] = sums[b];
        }
      }
  }
  // The rounded values in fp32, into out (M, K).
  void dequantize(int M, std::vector<float>& out) const {
    out.resize(static_cast<size_t>(M) * K);
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(q[i]) * d[i / kQ8Block];
  }
};

void PackedMatrix::pack(const float* W, int rows, int cols, WeightFormat f) { pack({{W, rows}}, cols, f); }

void PackedMatrix::pack(const std::vector<std::pair<const float*, int>>& stacked, int cols, WeightFormat f) {
  int rows = 0;
  for (const auto& part : stacked) rows += part.second;
  MOE_CHECK(rows > 0 && cols > 0, "packed weights: an empty matrix");
  if (f == WeightFormat::q8_0 && cols % kQ8Block != 0)
    throw Error("weights q8_0: a weight matrix has rows of " + std::to_string(cols) +
                " values, and Q8_0 packs rows in blocks of 32; use --weights bf16 for this model");
  fmt_ = f;
  rows_ = rows;
  cols_ = cols;
  f32_.clear();
  b16_.clear();
  q_.clear();
  qd_.clear();
  if (f == WeightFormat::fp32) {
    f32_.assign(stacked.begin(), stacked.end());
    return;
  }
  const size_t n = static_cast<size_t>(rows) * cols;
  std::vector<float> one;  // the stacked matrices contiguous
  const float* W = stacked.front().first;
  if (stacked.size() > 1) {
    one.reserve(n);
    for (const auto& [w, r] : stacked) one.insert(one.end(), w, w + static_cast<size_t>(r) * cols);
    W = one.data();
  }
  if (f == WeightFormat::bf16) {
    to_bf16(W, b16_, n);
  } else {
    const size_t blocks = n / kQ8Block, groups = (blocks + kQ8Group - 1) / kQ8Group;
    q_.assign(groups * kQ8GroupBytes, 128);  // the padding: zero weights with zero scales
    qd_.assign(groups * kQ8Group, 0);
    parallel_for(blocks, [&](size_t b) {
      int8_t v[kQ8Block];
      qd_[b] = quantize_q8_0_block(W + b * kQ8Block, v);
      for (int i = 0; i < kQ8Block; ++i) q_[q8_offset(b, i)] = static_cast<uint8_t>(v[i] + 128);
    }, 256);
  }
}

const float* PackedMatrix::f32_row(int r) const {
  for (const auto& [w, rows] : f32_) {
    if (r < rows) return w + static_cast<size_t>(r) * cols_;
    r -= rows;
  }
  return nullptr;
}

size_t PackedMatrix::bytes() const {
  const size_t f32 = fmt_ == WeightFormat::fp32 ? static_cast<size_t>(rows_) * cols_ * sizeof(float) : 0;
  // Q8_0: 34 bytes a block; the padding of the last group (under 16 blocks a matrix) is not counted.
  const size_t q8 = fmt_ == WeightFormat::q8_0 ? static_cast<size_t>(rows_) * cols_ / kQ8Block * (kQ8Block + 2) : 0;
  return f32 + b16_.size() * sizeof(bf16_t) + q8;
}

void PackedMatrix::unpack(int r0, int n, float* out) const {
  const size_t lo = static_cast<size_t>(r0) * cols_, len = static_cast<size_t>(n) * cols_;
  switch (fmt_) {
    case WeightFormat::fp32:
      for (int r = 0; r < n; ++r) std::copy_n(f32_row(r0 + r), cols_, out + static_cast<size_t>(r) * cols_);
      break;
    case WeightFormat::bf16:
      for (size_t i = 0; i < len; ++i) out[i] = bf16_to_float(b16_[lo + i]);
      break;
    case WeightFormat::q8_0:
      for (size_t b = 0; b < len / kQ8Block; ++b) {
        const size_t block = lo / kQ8Block + b;
        const float d = scale_of(qd_[block]);
        uint8_t qb[kQ8Block];  // the block's 4 bytes from each of the 8 slices, in order
        for (int j = 0; j < kQ8Block / 4; ++j) std::memcpy(qb + 4 * j, q_.data() + q8_offset(block, 4 * j), 4);
        for (int i = 0; i < kQ8Block; ++i) out[b * kQ8Block + i] = static_cast<float>(qb[i] - 128) * d;
      }
      break;
  }
}

namespace {

// fp32 and bf16: one packed row of W against R rows of x (row stride ldx) at once, Σ_i w_i·x_i, 16 lanes
// at a time into two accumulators (32 values a step; one chain of FMAs held a one-row product to one
// FMA's latency per 16 values: bf16 29 against 33-35 GB/s on the EPYC of docs/PERFORMANCE.md), then a
// last 16 and the scalar tail. Each widened chunk of the row serves all R. Every output sees the same
// operations in the same order whatever R is, so a sequence decoded in a batch gets the same numbers
// as decoded alone.
template <int R, class W, class Widen, class Scalar>
void dots_plain(const W* w, const float* x, size_t ldx, int K, float* out, Widen widen, Scalar scalar) {
  int i = 0;
  float s[R];
#if defined(__AVX512F__)
  __m512 acc[R], acc2[R];
  for (int r = 0; r < R; ++r) acc[r] = acc2[r] = _mm512_setzero_ps();
  for (; i + 32 <= K; i += 32) {
    const __m512 wv = widen(w + i), wv2 = widen(w + i + 16);
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + r * ldx + i), acc[r]);
      acc2[r] = _mm512_fmadd_ps(wv2, _mm512_loadu_ps(x + r * ldx + i + 16), acc2[r]);
    }
  }
  for (; i + 16 <= K; i += 16) {
    const __m512 wv = widen(w + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + r * ldx + i), acc[r]);
  }
  for (int r = 0; r < R; ++r) s[r] = hsum(_mm512_add_ps(acc[r], acc2[r]));
#else
  (void)widen;
  for (int r = 0; r < R; ++r) s[r] = 0.f;
#endif
  for (; i < K; ++i)  // fma spelled out: the same rounding however the compiler vectorises over r
    for (int r = 0; r < R; ++r) s[r] = std::fma(scalar(w[i]), x[r * ldx + i], s[r]);
  for (int r = 0; r < R; ++r) out[r] = s[r];
}

// Q8_0: group g of W (16 blocks) against R rows of rounded activations, in xq's dot layout (pattern p
// of each row): for each row r of x and block l of the group, prod_r[l] = t_l · (dw_l·dx_l), where t_l
// is the block's exact integer sum Σ_j qw_{l,j}·qx_{l,j}. The weights are stored as qw + 128
// (unsigned), so a lane starts at the correction −128·Σ qx and the 8 slices' vpdpbusd add the 32
// products to it.
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
template <int R>
__attribute__((always_inline)) inline void q8_group(const uint8_t* w, const uint16_t* dw, const int8_t* xv, const float* xs, const int32_t* xbase, int P,
              size_t g, int p, __m512 (&prod)[R]) {
  constexpr __mmask16 all = 0xFFFF;  // the zero-masked forms: see hsum (core/simd.h)
  const uint8_t* wg = w + g * kQ8GroupBytes;
  __m512i wv[8];
  for (int j = 0; j < 8; ++j) wv[j] = _mm512_loadu_si512(wg + 64 * j);
  const __m512 sw = _mm512_maskz_cvtph_ps(all, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dw + g * kQ8Group)));
  for (int r = 0; r < R; ++r) {
    const size_t rp = static_cast<size_t>(r) * P + p;
    const int8_t* xg = xv + rp * kQ8GroupBytes;
    // Four chains of two vpdpbusd (each waits for the last), added: integers, so the same sums.
    __m512i t[4] = {_mm512_loadu_si512(xbase + rp * kQ8Group), _mm512_setzero_si512(), _mm512_setzero_si512(),
                    _mm512_setzero_si512()};
    for (int j = 0; j < 8; ++j) t[j % 4] = _mm512_dpbusd_epi32(t[j % 4], wv[j], _mm512_loadu_si512(xg + 64 * j));
    const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(t[0], t[1]), _mm512_add_epi32(t[2], t[3]));
    // The masked forms are builtins, which GCC never contracts into a fused multiply-add with the sums
    // that follow (it may with the plain ones, differently in each instantiation).
    prod[r] = _mm512_maskz_mul_ps(all, _mm512_maskz_cvtepi32_ps(all, sum), _mm512_mul_ps(sw, _mm512_loadu_ps(xs + rp * kQ8Group)));
  }
}

// Sixteen rows' sums at once, each the tree hsum (core/simd.h) builds over one row's 16 lanes (lanes
// i and i + 8, then i and i + 4, i and i + 2, 0 and 1), so the same numbers as hsum row by row. v
// holds n vectors, as far along the tree as the rows' lanes already are: 16 vectors of one row each;
// 8 of two rows (lanes 0–7 and 8–15); 4 of four rows (a 128-bit quarter each); 2 of eight rows (two
// lanes each); the result's lane order then depends on n (see q8_chunk).
inline __m512 sums_of_rows(__m512* v, int n) {
  constexpr __mmask16 all = 0xFFFF;  // the zero-masked forms: see hsum (core/simd.h)
  const auto step = [&](int count, auto shuffle, int lo, int hi) {
    for (int k = 0; k < count; ++k) v[k] = _mm512_add_ps(shuffle(v[2 * k], v[2 * k + 1], lo), shuffle(v[2 * k], v[2 * k + 1], hi));
  };
  // The 128-bit quarters of a and b, or the lanes of each quarter, as the immediate picks them.
  const auto quarters = [](__m512 a, __m512 b, int imm) {
    switch (imm) {
      case 0x44: return _mm512_maskz_shuffle_f32x4(all, a, b, 0x44);
      case 0xEE: return _mm512_maskz_shuffle_f32x4(all, a, b, 0xEE);
      case 0x88: return _mm512_maskz_shuffle_f32x4(all, a, b, 0x88);
      default: return _mm512_maskz_shuffle_f32x4(all, a, b, 0xDD);
    }
  };
  const auto lanes = [](__m512 a, __m512 b, int imm) {
    switch (imm) {
      case 0x44: return _mm512_maskz_shuffle_ps(all, a, b, 0x44);
      case 0xEE: return _mm512_maskz_shuffle_ps(all, a, b, 0xEE);
      case 0x88: return _mm512_maskz_shuffle_ps(all, a, b, 0x88);
      default: return _mm512_maskz_shuffle_ps(all, a, b, 0xDD);
    }
  };
  if (n == 16) step(8, quarters, 0x44, 0xEE);  // lanes i and i + 8 (two rows a vector after it)
  if (n >= 8) step(4, quarters, 0x88, 0xDD);   // i and i + 4 (four rows)
  if (n >= 4) step(2, lanes, 0x44, 0xEE);      // i and i + 2 (eight rows)
  if (n >= 2) step(1, lanes, 0x88, 0xDD);      // 0 and 1 (sixteen)
  return v[0];
}
#endif

// The sum of a row's nb block products: 16 lanes, block b in lane b mod 16, then hsum across the lanes.
inline float q8_row_sum(const float* prod, int nb) {
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  int b = 0;
  for (; b + kQ8Group <= nb; b += kQ8Group) acc = _mm512_add_ps(acc, _mm512_loadu_ps(prod + b));
  if (b < nb) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (nb - b)) - 1), prod + b));
  return hsum(acc);
#else
  float lane[kQ8Group] = {};
  for (int b = 0; b < nb; ++b) lane[b % kQ8Group] += prod[b];
  float s = 0.f;
  for (float v : lane) s += v;
  return s;
#endif
}

// Rows [r0, r1) of a Q8_0 W (r0 a multiple of 16, at most 16 rows) against the R rows of xq:
// sums[r·16 + i] = W_{r0+i} · x_r. A row's sum is its blocks' products summed 16 lanes at a time in
// the order of the blocks and then across the lanes as hsum does, whatever R is. Rows of 16·k blocks,
// and rows of 8, 4, 2 or 1 blocks (several to a group), reduce sixteen rows at once in registers;
// other lengths go through a buffer of products.
template <int R>
void q8_chunk(const uint8_t* w, const uint16_t* dw, const int8_t* xv, const float* xs, const int32_t* xbase, int nb,
              int P, int r0, int r1, float* sums) {
  const int g0 = r0 * nb / kQ8Group, g1 = (r1 * nb + kQ8Group - 1) / kQ8Group;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  if (nb % kQ8Group == 0 || kQ8Group % nb == 0) {
    __m512 v[R][kQ8Group];
    __m512 prod[R];
    int n = kQ8Group;
    if (nb % kQ8Group == 0) {  // P = nb / 16: a row's k-th group has pattern k
      const int per_row = nb / kQ8Group;
      for (int i = 0; i < kQ8Group; ++i) {
        for (int r = 0; r < R; ++r) v[r][i] = _mm512_setzero_ps();
        if (i >= r1 - r0) continue;
        for (int k = 0; k < per_row; ++k) {
          q8_group<R>(w, dw, xv, xs, xbase, P, static_cast<size_t>(g0 + i * per_row + k), k, prod);
          for (int r = 0; r < R; ++r) v[r][i] = _mm512_maskz_add_ps(0xFFFF, v[r][i], prod[r]);
        }
      }
    } else {  // several rows a group, P = 1
      n = nb;
      for (int k = 0; k < nb; ++k) {
        if (g0 + k < g1) {
          q8_group<R>(w, dw, xv, xs, xbase, P, static_cast<size_t>(g0 + k), 0, prod);
          for (int r = 0; r < R; ++r) v[r][k] = prod[r];
        } else {
          for (int r = 0; r < R; ++r) v[r][k] = _mm512_setzero_ps();
        }
      }
      for (int k = nb; k < kQ8Group; ++k)
        for (int r = 0; r < R; ++r) v[r][k] = _mm512_setzero_ps();
    }
    // The lanes of sums_of_rows' result back in the rows' order.
    alignas(64) int idx[kQ8Group];
    for (int i = 0; i < kQ8Group; ++i)
      idx[i] = n >= 4 ? 4 * (i % 4) + i / 4 : n == 2 ? 4 * ((i % 8) / 2) + 2 * (i / 8) + i % 2 : i;
    const __m512i order = _mm512_load_si512(idx);
    for (int r = 0; r < R; ++r)
      _mm512_storeu_ps(sums + r * kQ8Group, _mm512_maskz_permutexvar_ps(0xFFFF, order, sums_of_rows(v[r], n)));
    return;
  }
#endif
  thread_local std::vector<float> prod;
  const size_t ldp = static_cast<size_t>(g1 - g0) * kQ8Group;
  prod.resize(static_cast<size_t>(R) * ldp);
  for (int g = g0, p = g0 % P; g < g1; ++g, p = p + 1 == P ? 0 : p + 1) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    __m512 pr[R];
    q8_group<R>(w, dw, xv, xs, xbase, P, static_cast<size_t>(g), p, pr);
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(prod.data() + r * ldp + static_cast<size_t>(g - g0) * kQ8Group, pr[r]);
#else
    for (int r = 0; r < R; ++r) {
      const size_t rp = static_cast<size_t>(r) * P + p;
      for (int l = 0; l < kQ8Group; ++l) {
        int t = xbase[rp * kQ8Group + l];
        for (int i = 0; i < kQ8Block; ++i) {
          const size_t o = q8_offset(static_cast<size_t>(l), i);
          t += static_cast<int>(w[static_cast<size_t>(g) * kQ8GroupBytes + o]) * xv[rp * kQ8GroupBytes + o];
        }
        const float sc = scale_of(dw[static_cast<size_t>(g) * kQ8Group + l]) * xs[rp * kQ8Group + l];
        prod[r * ldp + static_cast<size_t>(g - g0) * kQ8Group + l] = static_cast<float>(t) * sc;
      }
    }
#endif
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < r1 - r0; ++i) sums[r * kQ8Group + i] = q8_row_sum(prod.data() + r * ldp + static_cast<size_t>(i) * nb, nb);
}

constexpr int kDotRows = 8;     // up to this many rows of x: dot products from the packed rows
constexpr int kRowChunk = 16;   // rows of W per task of the dot-product path: one q8_chunk
static_assert(kRowChunk == kQ8Group, "q8_chunk takes 16 rows and writes their sums 16 apart");
constexpr int kPanel = 64;      // rows of W unpacked per sgemm in the panel path
constexpr size_t kSerialBytes = size_t{96} << 10;  // dot products over smaller matrices: one thread

// f(std::integral_constant<int, M>{}) for 1 ≤ M ≤ kDotRows: the products' row count as a template
// argument, so that their per-row accumulators stay in registers.
template <class F>
void with_rows(int M, F&& f) {
  switch (M) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, kDotRows>{}); break;
  }
}

}  // namespace

template <int R>
void PackedMatrix::dots(int r, const float* x, float* out) const {  // fp32 or bf16 (Q8_0: q8_chunk)
  const size_t ldx = static_cast<size_t>(cols_);
  if (fmt_ == WeightFormat::fp32) {
#if defined(__AVX512F__)
    dots_plain<R>(f32_row(r), x, ldx, cols_, out, [](const float* p) { return _mm512_loadu_ps(p); }, [](float v) { return v; });
#else
    dots_plain<R>(f32_row(r), x, ldx, cols_, out, nullptr, [](float v) { return v; });
#endif
    return;
  }
  const bf16_t* w = b16_.data() + static_cast<size_t>(r) * cols_;
#if defined(__AVX512F__)
  dots_plain<R>(w, x, ldx, cols_, out, widen_bf16x16, bf16_to_float);
#else
  dots_plain<R>(w, x, ldx, cols_, out, nullptr, bf16_to_float);
#endif
}

void PackedMatrix::q8_chunk(int r0, int r1, const Q8Rows& xq, int M, float* sums) const {
  with_rows(M, [&](auto R) {
    moe::q8_chunk<decltype(R)::value>(q_.data(), qd_.data(), xq.xv.data(), xq.xs.data(), xq.xbase.data(), xq.nb, xq.P, r0,
                                      r1, sums);
  });
}

void PackedMatrix::matmul(const float* x, int M, float* y, int ldy, bool accumulate) const {
  matmul(x, M, {Part{rows_, y, ldy}}, accumulate);
}

void PackedMatrix::matmul(const float* x, int M, std::initializer_list<Part> parts, bool accumulate) const {
  MOE_CHECK(!empty(), "packed weights: matmul before pack");
  constexpr size_t kMaxParts = 4;
  MOE_CHECK(parts.size() >= 1 && parts.size() <= kMaxParts, "packed weights: 1 to 4 parts");
  // Part i holds rows [start[i], start[i + 1]) of W.
  int start[kMaxParts + 1] = {0};
  const Part* part = parts.begin();
  for (size_t i = 0; i < parts.size(); ++i) start[i + 1] = start[i] + part[i].rows;
  MOE_CHECK(start[parts.size()] == rows_, "packed weights: the parts' rows do not add up to the matrix's");
  if (M <= 0) return;
  const int K = cols_;
  // Q8_0: x's rows rounded to int8 blocks, for the dot products as they are, for sgemm widened back.
  // The caller's thread owns them; the workers see them through these pointers (a lambda refers to a
  // thread_local by name in the thread that runs it).
  thread_local Q8Rows q8_rows;
  thread_local std::vector<float> q8_widened;
  const Q8Rows* xq = &q8_rows;
  if (fmt_ == WeightFormat::q8_0) {
    q8_rows.quantize(x, M, K, M <= kDotRows);
    if (M > kDotRows) {
      q8_rows.dequantize(M, q8_widened);
      x = q8_widened.data();
    }
  }
  if (M <= kDotRows) {
    // Each row of W is read once, for every row of x at once, a chunk of kRowChunk rows a task. A matrix
    // of under kSerialBytes (for one row of x; the work grows with the rows) runs on this thread alone:
    // opening a parallel region costs more than half its reads (`micro_moe
    // --benchmark_filter=PackedMatvec`: a 256 × 256 Q8_0 matrix, 70 KB, took 2.0 µs on one thread of
    // the AMX Xeon and 2.4–3.1 on two).
    const size_t chunks = (static_cast<size_t>(rows_) + kRowChunk - 1) / kRowChunk;
    const size_t grain = bytes() * static_cast<size_t>(M) < kSerialBytes ? chunks + 1 : 2;
    parallel_for(chunks, [&](size_t c) {
      const int r0 = static_cast<int>(c) * kRowChunk, r1 = std::min(rows_, r0 + kRowChunk);
      float sums[kDotRows * kRowChunk];  // sums[m·kRowChunk + i] = W_{r0+i} · x_m
      if (fmt_ == WeightFormat::q8_0) {
        q8_chunk(r0, r1, *xq, M, sums);
      } else {
        with_rows(M, [&](auto R) {
          constexpr int n = decltype(R)::value;
          float v[n];
          for (int r = r0; r < r1; ++r) {
            dots<n>(r, x, v);
            for (int m = 0; m < n; ++m) sums[m * kRowChunk + (r - r0)] = v[m];
          }
        });
      }
      for (size_t j = 0; j < parts.size(); ++j) {  // the chunk's rows in each part it overlaps
        const int a = std::max(r0, start[j]), b = std::min(r1, start[j + 1]);
        for (int m = 0; m < M && a < b; ++m) {
          float* out = part[j].y + static_cast<size_t>(m) * part[j].ldy + (a - start[j]);
          const float* v = sums + m * kRowChunk + (a - r0);
          for (int k = 0; k < b - a; ++k) out[k] = accumulate ? out[k] + v[k] : v[k];
        }
      }
    }, grain);
    return;
  }
  if (fmt_ == WeightFormat::fp32) {  // nothing to unpack: sgemm on each matrix's rows in each part
    int v0 = 0;
    for (const auto& [w, vrows] : f32_) {
      for (size_t i = 0; i < parts.size(); ++i) {
        const int a = std::max(v0, start[i]), b = std::min(v0 + vrows, start[i + 1]);
        if (a < b)
          sgemm(false, true, M, b - a, K, 1.f, x, K, w + static_cast<size_t>(a - v0) * K, K, accumulate ? 1.f : 0.f,
                part[i].y + (a - start[i]), part[i].ldy);
      }
      v0 += vrows;
    }
    return;
  }
  const size_t panels = (static_cast<size_t>(rows_) + kPanel - 1) / kPanel;
  parallel_for(panels, [&](size_t p) {
    thread_local std::vector<float> w;
    const int r0 = static_cast<int>(p) * kPanel, r1 = std::min(rows_, r0 + kPanel);
    w.resize(static_cast<size_t>(r1 - r0) * K);
    unpack(r0, r1 - r0, w.data());
    for (size_t i = 0; i < parts.size(); ++i) {  // the panel's rows in each part it overlaps
      const int a = std::max(r0, start[i]), b = std::min(r1, start[i + 1]);
      if (a >= b) continue;
      sgemm(false, true, M, b - a, K, 1.f, x, K, w.data() + static_cast<size_t>(a - r0) * K, K, accumulate ? 1.f : 0.f,
            part[i].y + (a - start[i]), part[i].ldy);
    }
  }, 2);
}

void pack_and_round(float* W, int rows, int cols, WeightFormat f, PackedMatrix& p) { pack_and_round({{W, rows}}, cols, f, p); }

void pack_and_round(const std::vector<std::pair<float*, int>>& stacked, int cols, WeightFormat f, PackedMatrix& p) {
  p.pack(std::vector<std::pair<const float*, int>>(stacked.begin(), stacked.end()), cols, f);
  if (f == WeightFormat::fp32) return;  // read in place
  int r0 = 0;
  for (const auto& [w, rows] : stacked) {
    p.unpack(r0, rows, w);
    r0 += rows;
  }
}

}  // namespace moe
