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
    parallel_for(n / kQ8Block, [&](size_t b) { qd_[b] = quantize_q8_0_block(W + b * kQ8Block, q_.data() + b * kQ8Block); }, 256);
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
        for (int i = 0; i < kQ8Block; ++i) out[b * kQ8Block + i] = static_cast<float>(q_[lo + b * kQ8Block + i]) * d;
      }
      break;
  }
}

namespace {

// Dot products of one packed row of W with R rows of x (row stride ldx) at once: each widened chunk of
// the row serves all R. Every output sees the same operations in the same order whatever R is, so a
// sequence decoded in a batch gets the same numbers as decoded alone.
#if defined(__AVX512F__)
inline __m512 widen_i8(const int8_t* p) {  // zero-masked forms: see widen_bf16x16 (core/bf16.h)
  return _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#endif

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

// Q8_0 rows: Σ_b d_b · Σ_i q_{b,i}·x_{b,i} over the K / 32 blocks.
template <int R>
void dots_q8_0(const int8_t* q, const uint16_t* d, const float* x, size_t ldx, int K, float* out) {
  const int nb = K / kQ8Block;
#if defined(__AVX512F__)
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const __m512 w0 = widen_i8(q + b * 32), w1 = widen_i8(q + b * 32 + 16), db = _mm512_set1_ps(scale_of(d[b]));
    for (int r = 0; r < R; ++r) {
      const float* xb = x + r * ldx + b * 32;
      const __m512 t = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(w0, _mm512_loadu_ps(xb)));
      acc[r] = _mm512_fmadd_ps(t, db, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
#else
  for (int r = 0; r < R; ++r) {
    float s = 0.f;
    for (int b = 0; b < nb; ++b) {
      float t = 0.f;
      for (int i = 0; i < 32; ++i) t = std::fma(static_cast<float>(q[b * 32 + i]), x[r * ldx + b * 32 + i], t);
      s = std::fma(scale_of(d[b]), t, s);
    }
    out[r] = s;
  }
#endif
}

constexpr int kDotRows = 8;     // up to this many rows of x: dot products from the packed rows
constexpr int kRowChunk = 16;   // rows of W per task of the dot-product path
constexpr int kPanel = 64;      // rows of W unpacked per sgemm in the panel path

}  // namespace

template <int R>
void PackedMatrix::dots(int r, const float* x, float* out) const {
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
    case WeightFormat::q8_0: dots_q8_0<R>(q_.data() + o, qd_.data() + o / kQ8Block, x, ldx, cols_, out); return;
  }
}

void PackedMatrix::dots(int r, const float* x, int M, float* out) const {
  switch (M) {
    case 1: dots<1>(r, x, out); break;
    case 2: dots<2>(r, x, out); break;
    case 3: dots<3>(r, x, out); break;
    case 4: dots<4>(r, x, out); break;
    case 5: dots<5>(r, x, out); break;
    case 6: dots<6>(r, x, out); break;
    case 7: dots<7>(r, x, out); break;
    default: dots<8>(r, x, out); break;
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
  if (M <= kDotRows) {
    // Each row of W is read once, for every row of x at once.
    const size_t chunks = (static_cast<size_t>(rows_) + kRowChunk - 1) / kRowChunk;
    parallel_for(chunks, [&](size_t c) {
      const int r1 = std::min(rows_, static_cast<int>(c + 1) * kRowChunk);
      size_t i = 0;
      float v[kDotRows];
      for (int r = static_cast<int>(c) * kRowChunk; r < r1; ++r) {
        while (r >= start[i + 1]) ++i;
        dots(r, x, M, v);
        for (int m = 0; m < M; ++m) {
          float& out = part[i].y[static_cast<size_t>(m) * part[i].ldy + (r - start[i])];
          out = accumulate ? out + v[m] : v[m];
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
