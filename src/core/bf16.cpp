#include "core/bf16.h"

#include <immintrin.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/storage.h"

namespace moe {

bf16_t float_to_bf16(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_t>((bits >> 16) | 0x40u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<bf16_t>(bits >> 16);
}

void to_bf16(const float* src, bf16_t* dst, size_t n) {
  size_t i = 0;
#if defined(__AVX512BF16__)
  for (; i + 32 <= n; i += 32) {
    __m512 lo = _mm512_loadu_ps(src + i), hi = _mm512_loadu_ps(src + i + 16);
    _mm512_storeu_si512(reinterpret_cast<void*>(dst + i), reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
  }
#endif
  for (; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

void add_scaled_bf16(float g, const bf16_t* x, float* y, size_t n) {
  size_t i = 0;
#if defined(__AVX512F__)
  const __m512 vg = _mm512_set1_ps(g);
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(vg, widen_bf16x16(x + i), _mm512_loadu_ps(y + i)));
  }
#endif
  for (; i < n; ++i) y[i] = std::fma(g, bf16_to_float(x[i]), y[i]);
}

// Σ x_i·w_i for n fp32 values x and bf16 values w, accumulated in fp32: dots_bf16's rows of other widths.
static float dot_bf16(const float* x, const bf16_t* w, size_t n) {
  size_t i = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), widen_bf16x16(w + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), widen_bf16x16(w + i + 16), acc1);
  }
  if (i + 16 <= n) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), widen_bf16x16(w + i), acc0);
    i += 16;
  }
  s = hsum(_mm512_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) s = std::fma(x[i], bf16_to_float(w[i]), s);
  return s;
}

#if defined(__AVX512F__)
namespace {

// 32 bf16 values as two fp32 vectors: the even ones (the low half of each 32-bit lane, shifted up) and
// the odd ones (the high half, masked). The zero-masked shift: see widen_bf16x16 (core/bf16.h).
inline __m512 even_bf16(__m512i w) { return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, w, 16)); }
inline __m512 odd_bf16(__m512i w) { return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)))); }

// sum_rows_bf16 with C chunks of 32 values a row, all 2·C accumulators in registers.
template <int C>
void sum_rows_chunks(const float* p, const bf16_t* w, size_t ldw, int n, float* y) {
  __m512 even[C], odd[C];
  for (int c = 0; c < C; ++c) even[c] = odd[c] = _mm512_setzero_ps();
  for (int j = 0; j < n; ++j) {
    const bf16_t* row = w + static_cast<size_t>(j) * ldw;
    const __m512 pj = _mm512_set1_ps(p[j]);
    for (int c = 0; c < C; ++c) {
      const __m512i v = _mm512_loadu_si512(row + 32 * c);
      even[c] = _mm512_fmadd_ps(pj, even_bf16(v), even[c]);
      odd[c] = _mm512_fmadd_ps(pj, odd_bf16(v), odd[c]);
    }
  }
  for (int c = 0; c < C; ++c) {  // interleave back: y[32c + 2i] = even[c][i], y[32c + 2i + 1] = odd[c][i]
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    _mm512_storeu_ps(y + 32 * c, _mm512_permutex2var_ps(even[c], lo, odd[c]));
    _mm512_storeu_ps(y + 32 * c + 16, _mm512_permutex2var_ps(even[c], hi, odd[c]));
  }
}

}  // namespace
#endif

void dots_bf16(const float* x, const bf16_t* w, size_t ldw, int n, int k, float alpha, float* s) {
#if defined(__AVX512F__)
  constexpr int kMax = 1024;
  if (k % 32 == 0 && k <= kMax) {
    alignas(64) float xe[kMax / 2], xo[kMax / 2];  // x's even and odd values, chunk by chunk
    for (int i = 0; i < k / 2; ++i) {
      xe[i] = x[2 * i];
      xo[i] = x[2 * i + 1];
    }
    for (int j = 0; j < n; ++j) {
      const bf16_t* row = w + static_cast<size_t>(j) * ldw;
      __m512 acc = _mm512_setzero_ps();
      for (int i = 0; i < k; i += 32) {
        const __m512i v = _mm512_loadu_si512(row + i);
        acc = _mm512_fmadd_ps(_mm512_load_ps(xe + i / 2), even_bf16(v), acc);
        acc = _mm512_fmadd_ps(_mm512_load_ps(xo + i / 2), odd_bf16(v), acc);
      }
      s[j] = alpha * hsum(acc);
    }
    return;
  }
#endif
  for (int j = 0; j < n; ++j) s[j] = alpha * dot_bf16(x, w + static_cast<size_t>(j) * ldw, static_cast<size_t>(k));
}

void sum_rows_bf16(const float* p, const bf16_t* w, size_t ldw, int n, int k, float* y) {
#if defined(__AVX512F__)
  switch (k) {  // up to 8 chunks: 16 accumulators
    case 32: return sum_rows_chunks<1>(p, w, ldw, n, y);
    case 64: return sum_rows_chunks<2>(p, w, ldw, n, y);
    case 96: return sum_rows_chunks<3>(p, w, ldw, n, y);
    case 128: return sum_rows_chunks<4>(p, w, ldw, n, y);
    case 160: return sum_rows_chunks<5>(p, w, ldw, n, y);
    case 192: return sum_rows_chunks<6>(p, w, ldw, n, y);
    case 224: return sum_rows_chunks<7>(p, w, ldw, n, y);
    case 256: return sum_rows_chunks<8>(p, w, ldw, n, y);
    default: break;
  }
#endif
  std::fill(y, y + k, 0.f);
  for (int j = 0; j < n; ++j) add_scaled_bf16(p[j], w + static_cast<size_t>(j) * ldw, y, static_cast<size_t>(k));
}

void round_to_bf16(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = bf16_to_float(float_to_bf16(x[i]));
}

void to_bf16(const float* src, bf16_vector& dst, size_t n) {
  dst.resize(n);
  const size_t block = 1 << 14;
  parallel_for((n + block - 1) / block, [&](size_t i) {
    const size_t lo = i * block, len = std::min(block, n - lo);
    to_bf16(src + lo, dst.data() + lo, len);
  }, 2);
}

void from_bf16(const bf16_t* src, float* dst, size_t n) {
  parallel_for(n, [&](size_t i) { dst[i] = bf16_to_float(src[i]); });
}

void Bf16Linear::forward(const bf16_t* xb, int T, int K, const float* W, int N, float* y, bool accumulate) {
  to_bf16(W, wb, static_cast<size_t>(N) * K);
  gemm_bf16(false, true, T, N, K, xb, K, wb.data(), K, accumulate ? 1.f : 0.f, y, N);
}

void Bf16Linear::backward(const bf16_t* dyb, const bf16_t* xb, int T, int K, int N, float* dW, float* dx,
                          bool accumulate_dx) {
  gemm_bf16(true, false, N, K, T, dyb, N, xb, K, 1.f, dW, K);
  if (!dx) return;
  const float beta = accumulate_dx ? 1.f : 0.f;
  if (bf16_transpose_weights()) {
    wtb.resize(static_cast<size_t>(N) * K);
    transpose_bf16(wb.data(), N, K, wtb.data());
    gemm_bf16(false, true, T, K, N, dyb, N, wtb.data(), N, beta, dx, K);
  } else {
    gemm_bf16(false, false, T, K, N, dyb, N, wb.data(), K, beta, dx, K);
  }
}

#if defined(__AVX512F__)
// The 8×8 block of 16-bit values at s (row stride ls), transposed: o[r] = column r.
static inline void transpose8x8(const bf16_t* s, size_t ls, __m128i* o) {
  __m128i r[8];
  for (int q = 0; q < 8; ++q) r[q] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + q * ls));
  __m128i a[8], b[8];
  for (int q = 0; q < 4; ++q) {
    a[2 * q] = _mm_unpacklo_epi16(r[2 * q], r[2 * q + 1]);
    a[2 * q + 1] = _mm_unpackhi_epi16(r[2 * q], r[2 * q + 1]);
  }
  for (int q = 0; q < 2; ++q) {
    b[4 * q] = _mm_unpacklo_epi32(a[4 * q], a[4 * q + 2]);
    b[4 * q + 1] = _mm_unpackhi_epi32(a[4 * q], a[4 * q + 2]);
    b[4 * q + 2] = _mm_unpacklo_epi32(a[4 * q + 1], a[4 * q + 3]);
    b[4 * q + 3] = _mm_unpackhi_epi32(a[4 * q + 1], a[4 * q + 3]);
  }
  for (int q = 0; q < 4; ++q) {
    o[2 * q] = _mm_unpacklo_epi64(b[q], b[q + 4]);
    o[2 * q + 1] = _mm_unpackhi_epi64(b[q], b[q + 4]);
  }
}
#endif

void transpose_bf16(const bf16_t* src, int rows, int cols, bf16_t* dst) {
  const size_t R = static_cast<size_t>(rows), C = static_cast<size_t>(cols);
#if defined(__AVX512F__)
  if (rows % 32 == 0 && cols % 8 == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
    // A band of 32 source rows (in L1 while its columns go by) becomes one 64-byte line in each
    // of the 8 destination rows of every 8-column step.
    parallel_for(R / 32, [&](size_t band) {
      const size_t i = band * 32;
      for (size_t j = 0; j < C; j += 8) {
        __m128i q[4][8];
        for (size_t t = 0; t < 4; ++t) transpose8x8(src + (i + 8 * t) * C + j, C, q[t]);
        for (size_t r = 0; r < 8; ++r) {
          __m512i v = _mm512_castsi128_si512(q[0][r]);
          v = _mm512_inserti32x4(v, q[1][r], 1);
          v = _mm512_inserti32x4(v, q[2][r], 2);
          v = _mm512_inserti32x4(v, q[3][r], 3);
          _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + (j + r) * R + i), v);
        }
      }
    }, 1);
    _mm_sfence();
    return;
  }
#endif
  constexpr size_t B = 32;
  parallel_for((R + B - 1) / B, [&](size_t band) {
    const size_t i0 = band * B, i1 = std::min(R, i0 + B);
    for (size_t j0 = 0; j0 < C; j0 += B)
      for (size_t j = j0; j < std::min(C, j0 + B); ++j)
        for (size_t i = i0; i < i1; ++i) dst[j * R + i] = src[i * C + j];
  }, 1);
}

bool bf16_transpose_weights() { return bf16_kernels() == Bf16Kernels::per_shape; }

namespace {

using dnnl::memory;
constexpr memory::dim RT = DNNL_RUNTIME_DIM_VAL;

// The strides of op(X) (rows × cols) for X stored row-major with row stride ld, transposed or not.
memory::dims strides_of(bool trans, int ld) {
  return trans ? memory::dims{1, ld} : memory::dims{ld, 1};
}

struct Bf16Gemm {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::string runtime_impl, shape_impl;  // the kernel of the runtime primitive, of the latest square per-shape one
  std::string fallback;                   // set when oneDNN has no bf16 matmul here
  std::atomic<Bf16Kernels> mode{Bf16Kernels::runtime};
  // False where this oneDNN has no bf16 matmul for the CPU (seen on CPUs without AVX-512): the
  // GEMMs then widen the bf16 inputs to fp32 (exactly) and run sgemm, the same arithmetic (exact
  // products, fp32 accumulation) at the fp32 rate.
  bool onednn = true;

  // Runtime shapes: one primitive per layout (transposes, accumulation, output type, row strides)
  // with the sizes left to run time. A runtime stride would select oneDNN's reference kernel, so each
  // stride that is not the dense one (a column block of a wider matrix) gets its own primitive, made
  // on first use; a layer has a handful. Key 0 for a stride means dense; m, n, k are 0.
  // Per shape: the sizes are part of the key as well.
  struct Key {
    bool ta, tb, acc, bf16_out;
    int lda, ldb, ldc;
    int m, n, k;
    auto operator<=>(const Key&) const = default;
  };
  // A primitive and the scratchpad it needs. The scratchpad is the caller's (a buffer per thread):
  // with oneDNN's own, every primitive shares one buffer (Debian's build does not enable concurrent
  // execution), and the experts' GEMMs, run side by side on the threads, overwrote each other's packed
  // tiles in the AMX kernels (brgemm); the runtime-size kernel (gemm:jit) needs none.
  struct Prim {
    dnnl::matmul matmul;
    size_t scratch_bytes;
  };
  std::map<Key, Prim> prims;
  std::mutex mutex;
  static constexpr size_t kMaxPrimitives = 4096;  // per-shape mode: forget them all past this many

  Bf16Gemm() {
    mode = default_bf16_kernels();
    try {
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
          for (int acc = 0; acc < 2; ++acc) primitive({ta != 0, tb != 0, acc != 0, false, 0, 0, 0, 0, 0, 0});
          primitive({ta != 0, tb != 0, false, true, 0, 0, 0, 0, 0, 0});
        }
    } catch (const dnnl::error&) {
      onednn = false;
      fallback = "sgemm on bf16 inputs widened to fp32 (oneDNN has no bf16 matmul for this CPU)";
    }
  }

  // op(X) (rows × cols) in type dt stored with row stride ld (0: dense); rows and cols 0: runtime sizes.
  static memory::desc desc(memory::data_type dt, bool trans, int ld, int rows, int cols) {
    if (rows == 0) {
      if (ld == 0) return memory::desc({RT, RT}, dt, trans ? memory::format_tag::ba : memory::format_tag::ab);
      return memory::desc({RT, RT}, dt, strides_of(trans, ld));
    }
    if (ld == 0) ld = trans ? rows : cols;
    return memory::desc({rows, cols}, dt, strides_of(trans, ld));
  }

  Prim primitive(const Key& key) {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = prims.find(key);
    if (it != prims.end()) return it->second;
    if (prims.size() >= kMaxPrimitives) prims.clear();
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (key.acc) {
      dnnl::post_ops po;
      po.append_sum(1.f);
      attr.set_post_ops(po);
    }
    const auto out = key.bf16_out ? memory::data_type::bf16 : memory::data_type::f32;
    dnnl::matmul::desc md(desc(memory::data_type::bf16, key.ta, key.lda, key.m, key.k),
                          desc(memory::data_type::bf16, key.tb, key.ldb, key.k, key.n),
                          desc(out, false, key.ldc, key.m, key.n));
    dnnl::matmul::primitive_desc pd(md, attr, engine);
    const bool runtime_dense = key.m == 0 && key.lda == 0 && key.ldb == 0 && key.ldc == 0;
    // The kernels reported: the runtime one, and the latest square per-shape one (a peak measurement's).
    if (!key.bf16_out && runtime_dense && !key.acc && !key.ta && key.tb) runtime_impl = pd.impl_info_str();
    if (!key.bf16_out && key.m > 0 && key.m == key.n && key.n == key.k) shape_impl = pd.impl_info_str();
    return prims.emplace(key, Prim{dnnl::matmul(pd), pd.scratchpad_desc().get_size()}).first->second;
  }

  // C = op(A)·op(B) (+ C when acc), C in fp32 or bf16 (`c_bf16`).
  //
  // Per shape (A·Bᵀ only), M and K are cut into a multiple of kBlock and a remainder, each its own
  // product (rows of C are independent; a remainder of K adds into C). An expert's GEMMs change their rows every
  // step, and a primitive for each new size took 0.8 ms to make and held 108 KB: 200 of them a step
  // made bf16 training 1.7x slower than the runtime-size kernel (a Xeon with AMX). Cut, each size
  // takes at most M/kBlock + kBlock primitives, made once.
  static constexpr int kBlock = 64;
  void run(bool ta, bool tb, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B, int ldb, bool acc,
           void* C, bool c_bf16, int ldc) {
    const bool shape = mode == Bf16Kernels::per_shape && !ta && tb;
    if (shape) {
      const size_t c_size = c_bf16 ? sizeof(bf16_t) : sizeof(float);
      if (const int mt = M % kBlock; M > kBlock && mt != 0) {
        const int mb = M - mt;
        run_one(ta, tb, mb, N, K, A, lda, B, ldb, acc, C, c_bf16, ldc, true);
        const bf16_t* At = A + static_cast<size_t>(mb) * lda;  // A's rows mb…
        void* Ct = static_cast<char*>(C) + static_cast<size_t>(mb) * ldc * c_size;
        run(ta, tb, mt, N, K, At, lda, B, ldb, acc, Ct, c_bf16, ldc);  // its K is cut as well
        return;
      }
      // A remainder of K sums into C: fp32 C only (a bf16 C would be rounded twice).
      if (const int kt = K % kBlock; !c_bf16 && K > kBlock && kt != 0) {
        const int kb = K - kt;
        run_one(ta, tb, M, N, kb, A, lda, B, ldb, acc, C, c_bf16, ldc, true);
        run_one(ta, tb, M, N, kt, A + kb, lda, B + kb, ldb, true, C, c_bf16, ldc, true);  // columns kb… of A, B
        return;
      }
    }
    run_one(ta, tb, M, N, K, A, lda, B, ldb, acc, C, c_bf16, ldc, shape);
  }

  // One product on one primitive: of its shape (`shape`), else of runtime sizes.
  void run_one(bool ta, bool tb, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B, int ldb, bool acc,
               void* C, bool c_bf16, int ldc, bool shape) {
    Key key{ta, tb, acc, c_bf16, lda == (ta ? M : K) ? 0 : lda, ldb == (tb ? K : N) ? 0 : ldb, ldc == N ? 0 : ldc,
            0, 0, 0};
    if (shape) {
      key.m = M;
      key.n = N;
      key.k = K;
    }
    const Prim prim = primitive(key);
    thread_local dnnl::stream stream(engine);
    // This thread's scratchpad, 64-byte aligned, grown to the largest a primitive has asked for.
    thread_local std::unique_ptr<void, decltype(&std::free)> scratch(nullptr, &std::free);
    thread_local size_t scratch_bytes = 0;
    if (scratch_bytes < std::max<size_t>(prim.scratch_bytes, 64)) {
      scratch_bytes = std::max<size_t>(prim.scratch_bytes, 64);
      scratch.reset(aligned_storage(scratch_bytes));
    }
    const memory::dim m = M, n = N, k = K;
    memory::desc a({m, k}, memory::data_type::bf16, strides_of(ta, lda));
    memory::desc b({k, n}, memory::data_type::bf16, strides_of(tb, ldb));
    memory::desc c({m, n}, c_bf16 ? memory::data_type::bf16 : memory::data_type::f32, strides_of(false, ldc));
    memory am(a, engine, const_cast<bf16_t*>(A)), bm(b, engine, const_cast<bf16_t*>(B)), cm(c, engine, C);
    memory sm({{static_cast<memory::dim>(scratch_bytes)}, memory::data_type::u8, memory::format_tag::a}, engine,
              scratch.get());
    prim.matmul.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}, {DNNL_ARG_SCRATCHPAD, sm}});
    stream.wait();
  }
};

Bf16Gemm& instance() {
  static Bf16Gemm g;
  return g;
}

void check_strides(const char* what, bool ta, bool tb, int M, int N, int K, int lda, int ldb, int ldc) {
  MOE_CHECK(lda >= (ta ? M : K) && ldb >= (tb ? K : N) && ldc >= N,
            std::string(what) + ": row strides lda, ldb, ldc must be at least the stored row lengths");
}

}  // namespace

const char* bf16_gemm_impl() {
  Bf16Gemm& g = instance();
  std::lock_guard<std::mutex> lock(g.mutex);
  thread_local std::string copy;
  copy = !g.onednn ? g.fallback : g.mode == Bf16Kernels::runtime ? g.runtime_impl : g.shape_impl;
  return copy.c_str();
}

Bf16Kernels default_bf16_kernels() {
  if (const std::optional<Bf16Kernels> set = enum_from_env<Bf16Kernels>("MOE_BF16_KERNELS")) return *set;
#if defined(__x86_64__)
  // AMX-BF16: CPUID leaf 7 (sub-leaf 0), EDX bit 22 (read directly: clang 14 knows no "amx-bf16" for
  // __builtin_cpu_supports).
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22) & 1u) return Bf16Kernels::per_shape;
#endif
  return Bf16Kernels::runtime;
}

Bf16Kernels bf16_kernels() { return instance().mode; }

void set_bf16_kernels(Bf16Kernels k) {
  Bf16Gemm& g = instance();
  g.mode = k;
}

GemmRate measure_gemm_bf16(int n, int samples) {
  const size_t nn = static_cast<size_t>(n) * static_cast<size_t>(n);
  std::vector<float> a(nn), b(nn), c(nn);
  fill_uniform(a.data(), nn, 1, 1, -1.f, 1.f);
  fill_uniform(b.data(), nn, 1, 2, -1.f, 1.f);
  std::vector<bf16_t> ab(nn), bb(nn);
  to_bf16(a.data(), ab.data(), nn);
  to_bf16(b.data(), bb.data(), nn);
  return time_gemm([&] { gemm_bf16(false, true, n, n, n, ab.data(), n, bb.data(), n, 0.f, c.data(), n); }, n, samples);
}

// The fallback of both GEMMs: C = op(A)·op(B) + beta·C in fp32 from the widened inputs.
static void gemm_bf16_widened(bool trans_a, bool trans_b, int M, int N, int K, const bf16_t* A, int lda,
                              const bf16_t* B, int ldb, float beta, float* C, int ldc) {
  thread_local std::vector<float> a, b;
  const int ra = trans_a ? K : M, ca = trans_a ? M : K, rb = trans_b ? N : K, cb = trans_b ? K : N;
  a.resize(static_cast<size_t>(ra) * ca);
  b.resize(static_cast<size_t>(rb) * cb);
  for (int i = 0; i < ra; ++i)
    for (int j = 0; j < ca; ++j) a[static_cast<size_t>(i) * ca + j] = bf16_to_float(A[static_cast<size_t>(i) * lda + j]);
  for (int i = 0; i < rb; ++i)
    for (int j = 0; j < cb; ++j) b[static_cast<size_t>(i) * cb + j] = bf16_to_float(B[static_cast<size_t>(i) * ldb + j]);
  sgemm(trans_a, trans_b, M, N, K, 1.f, a.data(), ca, b.data(), cb, beta, C, ldc);
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B,
               int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  MOE_CHECK(beta == 0.f || beta == 1.f, "gemm_bf16: beta must be 0 or 1");
  check_strides("gemm_bf16", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  Bf16Gemm& g = instance();
  if (K == 0) {
    if (beta == 0.f)
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) C[static_cast<size_t>(i) * ldc + j] = 0.f;
    return;
  }
  if (!g.onednn) {
    gemm_bf16_widened(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  g.run(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta != 0.f, C, false, ldc);
}

void gemm_bf16_out(bool trans_a, bool trans_b, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B,
                   int ldb, bf16_t* C, int ldc) {
  if (M == 0 || N == 0) return;
  MOE_CHECK(K > 0, "gemm_bf16_out: K must be positive");
  check_strides("gemm_bf16_out", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  Bf16Gemm& g = instance();
  if (!g.onednn) {
    thread_local std::vector<float> c;
    c.resize(static_cast<size_t>(M) * N);
    gemm_bf16_widened(trans_a, trans_b, M, N, K, A, lda, B, ldb, 0.f, c.data(), N);
    for (int i = 0; i < M; ++i) to_bf16(c.data() + static_cast<size_t>(i) * N, C + static_cast<size_t>(i) * ldc, static_cast<size_t>(N));
    return;
  }
  g.run(trans_a, trans_b, M, N, K, A, lda, B, ldb, false, C, true, ldc);
}

}  // namespace moe
