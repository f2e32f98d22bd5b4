#include "core/packed.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
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

// The M rows of x (M, K) rounded for a Q8_0 product: int8 values, an fp32 scale per block, and per
// block the correction of the weights' +128 offset, −128·Σ q, in lane 0 of 8 int32 lanes (where
// vpdpbusd's sum of the block starts), which only the dot products read.
struct PackedMatrix::Q8Rows {
  int K = 0, nb = 0;
  std::vector<int8_t> q;       // (M, K)
  std::vector<float> d;        // (M, K / 32)
  std::vector<int32_t> base;   // (M, K / 32, 8)
  void quantize(const float* x, int M, int cols, bool for_dots) {
    K = cols;
    nb = cols / kQ8Block;
    const size_t blocks = static_cast<size_t>(M) * nb;
    q.resize(static_cast<size_t>(M) * K);
    d.resize(blocks);
    base.assign(for_dots ? blocks * 8 : 0, 0);
    for (size_t b = 0; b < blocks; ++b) {
      int8_t* qb = q.data() + b * kQ8Block;
      d[b] = quantize_activation_block(x + b * kQ8Block, qb);
      if (!for_dots) continue;
      int sum = 0;
      for (int i = 0; i < kQ8Block; ++i) sum += qb[i];
      base[b * 8] = -128 * sum;
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
    q_.resize(n);
    qd_.resize(n / kQ8Block);
    parallel_for(n / kQ8Block, [&](size_t b) {
      int8_t v[kQ8Block];
      qd_[b] = quantize_q8_0_block(W + b * kQ8Block, v);
      for (int i = 0; i < kQ8Block; ++i) q_[b * kQ8Block + i] = static_cast<uint8_t>(v[i] + 128);
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
  return f32 + b16_.size() * sizeof(bf16_t) + q_.size() + qd_.size() * sizeof(uint16_t);
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
        const float d = scale_of(qd_[lo / kQ8Block + b]);
        for (int i = 0; i < kQ8Block; ++i)
          out[b * kQ8Block + i] = static_cast<float>(q_[lo + b * kQ8Block + i] - 128) * d;
      }
      break;
  }
}

namespace {

// Dot products of one packed row of W with R rows of x (row stride ldx) at once: each widened chunk of
// the row serves all R. Every output sees the same operations in the same order whatever R is, so a
// sequence decoded in a batch gets the same numbers as decoded alone.

// fp32 and bf16 rows: Σ_i w_i·x_i, 16 lanes at a time, then the scalar tail.
template <int R, class W, class Widen, class Scalar>
void dots_plain(const W* w, const float* x, size_t ldx, int K, float* out, Widen widen, Scalar scalar) {
  int i = 0;
  float s[R];
#if defined(__AVX512F__)
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (; i + 16 <= K; i += 16) {
    const __m512 wv = widen(w + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + r * ldx + i), acc[r]);
  }
  for (int r = 0; r < R; ++r) s[r] = hsum(acc[r]);
#else
  (void)widen;
  for (int r = 0; r < R; ++r) s[r] = 0.f;
#endif
  for (; i < K; ++i)  // fma spelled out: the same rounding however the compiler vectorises over r
    for (int r = 0; r < R; ++r) s[r] = std::fma(scalar(w[i]), x[r * ldx + i], s[r]);
  for (int r = 0; r < R; ++r) out[r] = s[r];
}

// RW consecutive Q8_0 rows of W against R rows of rounded activations: out[i·R + r] = Σ_b dw_b·dx_b ·
// Σ_j qw_{b,j}·qx_{b,j} over the K / 32 blocks. The weights are stored as qw + 128 (unsigned), so a
// block's integer sum starts at −128·Σ qx (Q8Rows::base) and vpdpbusd adds the 32 products (u8·s8,
// four to a lane) to it exactly. Two blocks a 512-bit vector: lanes 0–7 hold block b's 8 partial
// sums, lanes 8–15 block b + 1's; they go to fp32 and are multiplied by their block's dw_b·dx_b,
// formed 16 blocks at a time and spread over the lanes by one permute (one block's worth of masked
// loads when the count of blocks is odd). Every output sees the same operations whatever RW and R are.
template <int RW, int R>
void dots_q8_0(const uint8_t* w, const uint16_t* dw, const int8_t* q, const float* dx, const int32_t* base, int K,
               float* out) {
  const int nb = K / kQ8Block;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  constexpr __mmask16 all = 0xFFFF;  // the zero-masked forms: see hsum (core/simd.h)
  __m512 acc[RW][R];
  for (int i = 0; i < RW; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  // Blocks b and b + 1 (bytes and lanes: which of the two are loaded), their scales at lanes `at` of s.
  const auto pair = [&](int b, __m512i at, const __m512 (&s)[RW][R], __mmask64 bytes, __mmask16 lanes) {
    __m512i wv[RW];
    for (int i = 0; i < RW; ++i) wv[i] = _mm512_maskz_loadu_epi8(bytes, w + static_cast<size_t>(i) * K + b * kQ8Block);
    for (int r = 0; r < R; ++r) {
      const size_t rb = static_cast<size_t>(r) * nb + b;
      const __m512i qv = _mm512_maskz_loadu_epi8(bytes, q + rb * kQ8Block);
      const __m512i bv = _mm512_maskz_loadu_epi32(lanes, base + rb * 8);
      for (int i = 0; i < RW; ++i) {
        const __m512i t = _mm512_dpbusd_epi32(bv, wv[i], qv);
        acc[i][r] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(all, t), _mm512_maskz_permutexvar_ps(all, at, s[i][r]),
                                    acc[i][r]);
      }
    }
  };
  for (int g0 = 0; g0 < nb; g0 += 16) {
    const int ng = std::min(16, nb - g0);
    const auto gm = static_cast<__mmask16>((1u << ng) - 1);
    __m512 s[RW][R];  // dw_b·dx_b of the group's blocks
    for (int i = 0; i < RW; ++i) {
      const __m512 sw = _mm512_maskz_cvtph_ps(all, _mm256_maskz_loadu_epi16(gm, dw + static_cast<size_t>(i) * nb + g0));
      for (int r = 0; r < R; ++r)
        s[i][r] = _mm512_mul_ps(sw, _mm512_maskz_loadu_ps(gm, dx + static_cast<size_t>(r) * nb + g0));
    }
    __m512i at = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    int p = 0;
    for (; p + 2 <= ng; p += 2, at = _mm512_add_epi32(at, _mm512_set1_epi32(2))) pair(g0 + p, at, s, ~0ULL, all);
    if (p < ng) pair(g0 + p, at, s, 0xFFFFFFFFULL, 0x00FF);  // an odd count: the last block alone
  }
  for (int i = 0; i < RW; ++i)
    for (int r = 0; r < R; ++r) out[i * R + r] = hsum(acc[i][r]);
#else
  for (int i = 0; i < RW; ++i)
    for (int r = 0; r < R; ++r) {
      float s = 0.f;
      for (int b = 0; b < nb; ++b) {
        const size_t rb = static_cast<size_t>(r) * nb + b;
        int t = base[rb * 8];
        const uint8_t* wb = w + static_cast<size_t>(i) * K + b * kQ8Block;
        for (int j = 0; j < kQ8Block; ++j) t += static_cast<int>(wb[j]) * q[rb * kQ8Block + j];
        s = std::fma(static_cast<float>(t), scale_of(dw[static_cast<size_t>(i) * nb + b]) * dx[rb], s);
      }
      out[i * R + r] = s;
    }
#endif
}

constexpr int kDotRows = 8;     // up to this many rows of x: dot products from the packed rows
constexpr int kRowChunk = 16;   // rows of W per task of the dot-product path
constexpr int kPanel = 64;      // rows of W unpacked per sgemm in the panel path

}  // namespace

template <int R>
void PackedMatrix::dots(int r, const float* x, const Q8Rows* xq, float* out) const {
  const size_t o = static_cast<size_t>(r) * cols_, ldx = static_cast<size_t>(cols_);
  switch (fmt_) {
    case WeightFormat::fp32:
#if defined(__AVX512F__)
      dots_plain<R>(f32_row(r), x, ldx, cols_, out, [](const float* p) { return _mm512_loadu_ps(p); }, [](float v) { return v; });
#else
      dots_plain<R>(f32_row(r), x, ldx, cols_, out, nullptr, [](float v) { return v; });
#endif
      return;
    case WeightFormat::bf16:
#if defined(__AVX512F__)
      dots_plain<R>(b16_.data() + o, x, ldx, cols_, out, widen_bf16x16, bf16_to_float);
#else
      dots_plain<R>(b16_.data() + o, x, ldx, cols_, out, nullptr, bf16_to_float);
#endif
      return;
    case WeightFormat::q8_0:
      dots_q8_0<1, R>(q_.data() + o, qd_.data() + o / kQ8Block, xq->q.data(), xq->d.data(), xq->base.data(), cols_,
                      out);
      return;
  }
}

void PackedMatrix::dots(int r, const float* x, const Q8Rows* xq, int M, float* out) const {
  switch (M) {
    case 1: dots<1>(r, x, xq, out); break;
    case 2: dots<2>(r, x, xq, out); break;
    case 3: dots<3>(r, x, xq, out); break;
    case 4: dots<4>(r, x, xq, out); break;
    case 5: dots<5>(r, x, xq, out); break;
    case 6: dots<6>(r, x, xq, out); break;
    case 7: dots<7>(r, x, xq, out); break;
    default: dots<8>(r, x, xq, out); break;
  }
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
    // Each row of W is read once, for every row of x at once.
    const size_t chunks = (static_cast<size_t>(rows_) + kRowChunk - 1) / kRowChunk;
    parallel_for(chunks, [&](size_t c) {
      const int r1 = std::min(rows_, static_cast<int>(c + 1) * kRowChunk);
      size_t i = 0;
      float v[kDotRows];
      for (int r = static_cast<int>(c) * kRowChunk; r < r1;) {
        // One row of x (decoding) against Q8_0: four rows of W per call, which share its loads and
        // loop; the same numbers as one at a time.
        const int g = fmt_ == WeightFormat::q8_0 && M == 1 && r + 4 <= r1 ? 4 : 1;
        if (g == 4)
          dots_q8_0<4, 1>(q_.data() + static_cast<size_t>(r) * K, qd_.data() + static_cast<size_t>(r) * (K / kQ8Block),
                          xq->q.data(), xq->d.data(), xq->base.data(), K, v);
        else
          dots(r, x, xq, M, v);
        for (int k = 0; k < g; ++k, ++r) {
          while (r >= start[i + 1]) ++i;
          for (int m = 0; m < M; ++m) {
            float& out = part[i].y[static_cast<size_t>(m) * part[i].ldy + (r - start[i])];
            out = accumulate ? out + v[k * M + m] : v[k * M + m];
          }
        }
      }
    }, 2);
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
