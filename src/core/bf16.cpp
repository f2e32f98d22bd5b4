#include "core/bf16.h"

#include <immintrin.h>

#include <algorithm>

#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"

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

void to_bf16(const float* src, bf16_vector& dst, size_t n) {
  dst.resize(n);
  const size_t block = 1 << 14;
  parallel_for((n + block - 1) / block, [&](size_t i) {
    const size_t lo = i * block, len = std::min(block, n - lo);
    to_bf16(src + lo, dst.data() + lo, len);
  }, 2);
}

void Bf16Linear::forward(const bf16_t* xb, int T, int K, const float* W, int N, float* y, bool accumulate) {
  to_bf16(W, wb, static_cast<size_t>(N) * K);
  gemm_bf16(false, true, T, N, K, xb, K, wb.data(), K, accumulate ? 1.f : 0.f, y, N);
}

void Bf16Linear::backward(const bf16_t* dyb, const bf16_t* xb, int T, int K, int N, float* dW, float* dx,
                          bool accumulate_dx) const {
  gemm_bf16(true, false, N, K, T, dyb, N, xb, K, 1.f, dW, K);
  if (dx) gemm_bf16(false, false, T, K, N, dyb, N, wb.data(), K, accumulate_dx ? 1.f : 0.f, dx, K);
}

void to_bf16_stream(const float* src, bf16_t* dst, size_t n) {
#if defined(__AVX512BF16__)
  for (size_t i = 0; i < n; i += 32) {
    __m512 lo = _mm512_loadu_ps(src + i), hi = _mm512_loadu_ps(src + i + 16);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
  }
#else
  to_bf16(src, dst, n);
#endif
}

namespace {

using dnnl::memory;
constexpr memory::dim RT = DNNL_RUNTIME_DIM_VAL;

struct Bf16Gemm {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::matmul prims[2][2][2];  // [trans_a][trans_b][beta != 0], fp32 output
  dnnl::matmul prims_bf16[2][2];  // [trans_a][trans_b], bf16 output
  std::string impl;
  // False where this oneDNN has no bf16 matmul for the CPU (seen on CPUs without AVX-512): the
  // GEMMs then widen the bf16 inputs to fp32 (exactly) and run sgemm, the same arithmetic (exact
  // products, fp32 accumulation) at the fp32 rate.
  bool onednn = true;

  // Runtime sizes with fixed layouts (runtime strides would select oneDNN's reference kernel).
  static memory::desc desc(memory::data_type dt, bool trans) {
    return memory::desc({RT, RT}, dt, trans ? memory::format_tag::ba : memory::format_tag::ab);
  }

  Bf16Gemm() {
    try {
      make_primitives();
    } catch (const dnnl::error&) {
      onednn = false;
      impl = "sgemm on bf16 inputs widened to fp32 (oneDNN has no bf16 matmul for this CPU)";
    }
  }

  void make_primitives() {
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int acc = 0; acc < 2; ++acc) {
          dnnl::primitive_attr attr;
          if (acc) {
            dnnl::post_ops po;
            po.append_sum(1.f);
            attr.set_post_ops(po);
          }
          dnnl::matmul::desc md(desc(memory::data_type::bf16, ta), desc(memory::data_type::bf16, tb),
                                desc(memory::data_type::f32, false));
          dnnl::matmul::primitive_desc pd(md, attr, engine);
          impl = pd.impl_info_str();
          prims[ta][tb][acc] = dnnl::matmul(pd);
        }
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        dnnl::matmul::desc md(desc(memory::data_type::bf16, ta), desc(memory::data_type::bf16, tb),
                              desc(memory::data_type::bf16, false));
        prims_bf16[ta][tb] = dnnl::matmul(dnnl::matmul::primitive_desc(md, engine));
      }
  }
};

Bf16Gemm& instance() {
  static Bf16Gemm g;
  return g;
}

}  // namespace

const char* bf16_gemm_impl() { return instance().impl.c_str(); }

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
static void gemm_bf16_widened(bool trans_a, bool trans_b, int M, int N, int K, const bf16_t* A, const bf16_t* B,
                              float beta, float* C) {
  thread_local std::vector<float> a, b;
  const size_t na = static_cast<size_t>(M) * K, nb = static_cast<size_t>(K) * N;
  a.resize(na);
  b.resize(nb);
  for (size_t i = 0; i < na; ++i) a[i] = bf16_to_float(A[i]);
  for (size_t i = 0; i < nb; ++i) b[i] = bf16_to_float(B[i]);
  sgemm(trans_a, trans_b, M, N, K, 1.f, a.data(), trans_a ? M : K, b.data(), trans_b ? K : N, beta, C, N);
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B,
               int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  MOE_CHECK(beta == 0.f || beta == 1.f, "gemm_bf16: beta must be 0 or 1");
  MOE_CHECK(lda == (trans_a ? M : K) && ldb == (trans_b ? K : N) && ldc == N,
            "gemm_bf16: matrices must be stored densely (lda, ldb, ldc equal to their row lengths)");
  Bf16Gemm& g = instance();
  if (K == 0) {
    if (beta == 0.f)
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) C[static_cast<size_t>(i) * ldc + j] = 0.f;
    return;
  }
  if (!g.onednn) {
    gemm_bf16_widened(trans_a, trans_b, M, N, K, A, B, beta, C);
    return;
  }
  thread_local dnnl::stream stream(g.engine);
  const memory::dim m = M, n = N, k = K;
  using tag = memory::format_tag;
  memory::desc a({m, k}, memory::data_type::bf16, trans_a ? tag::ba : tag::ab);
  memory::desc b({k, n}, memory::data_type::bf16, trans_b ? tag::ba : tag::ab);
  memory::desc c({m, n}, memory::data_type::f32, tag::ab);
  memory am(a, g.engine, const_cast<bf16_t*>(A)), bm(b, g.engine, const_cast<bf16_t*>(B)), cm(c, g.engine, C);
  g.prims[trans_a][trans_b][beta != 0.f].execute(
      stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  stream.wait();
}

void gemm_bf16_out(bool trans_a, bool trans_b, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B,
                   int ldb, bf16_t* C, int ldc) {
  if (M == 0 || N == 0) return;
  MOE_CHECK(K > 0, "gemm_bf16_out: K must be positive");
  MOE_CHECK(lda == (trans_a ? M : K) && ldb == (trans_b ? K : N) && ldc == N,
            "gemm_bf16_out: matrices must be stored densely (lda, ldb, ldc equal to their row lengths)");
  Bf16Gemm& g = instance();
  if (!g.onednn) {
    thread_local std::vector<float> c;
    c.resize(static_cast<size_t>(M) * N);
    gemm_bf16_widened(trans_a, trans_b, M, N, K, A, B, 0.f, c.data());
    to_bf16(c.data(), C, c.size());
    return;
  }
  thread_local dnnl::stream stream(g.engine);
  using tag = memory::format_tag;
  const memory::dim m = M, n = N, k = K;
  memory::desc a({m, k}, memory::data_type::bf16, trans_a ? tag::ba : tag::ab);
  memory::desc b({k, n}, memory::data_type::bf16, trans_b ? tag::ba : tag::ab);
  memory::desc c({m, n}, memory::data_type::bf16, tag::ab);
  memory am(a, g.engine, const_cast<bf16_t*>(A)), bm(b, g.engine, const_cast<bf16_t*>(B)), cm(c, g.engine, C);
  g.prims_bf16[trans_a][trans_b].execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  stream.wait();
}

}  // namespace moe
