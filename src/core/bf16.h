// bf16.h — bfloat16 storage and the mixed-precision GEMM: bf16 inputs, fp32 accumulation and output.
//
// The GEMM runs on oneDNN's matmul (Debian's libdnnl), which uses the avx512_bf16 dot-product
// instructions where the CPU has them (about twice the fp32 FLOP rate) and falls back to its own
// kernels elsewhere; where this oneDNN has no bf16 matmul for the CPU at all (seen without AVX-512),
// the inputs are widened to fp32 and sgemm runs: the same exact products and fp32 accumulation, at the
// fp32 rate (bf16_gemm_impl() says which). By default shapes are runtime arguments: one primitive per
// layout (transposes, beta, output type, strides) serves every expert size, so nothing is compiled per
// step; on CPUs with AMX, primitives per shape for the products with weights as stored (Bf16Kernels
// below).
#pragma once
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "core/enum_names.h"
#include "core/storage.h"
#include "core/gemm.h"
#include "core/simd.h"

namespace moe {

using bf16_t = uint16_t;

// The arithmetic of a layer's GEMMs: fp32, or bf16 (bf16 inputs, fp32 accumulation; weights,
// gradients and everything outside the GEMMs stay fp32).
enum class Precision { fp32, bf16 };
template <>
struct EnumNames<Precision> {
  static constexpr const char* what = "precision";
  static constexpr std::array<const char*, 2> names = {"fp32", "bf16"};
};

// 64-byte aligned storage (one cache line, one AVX-512 register), for buffers written with
// streaming stores.
template <class T>
struct aligned_allocator {
  using value_type = T;
  aligned_allocator() = default;
  template <class U>
  aligned_allocator(const aligned_allocator<U>&) noexcept {}
  T* allocate(size_t n) {
    void* p = aligned_storage(n * sizeof(T));
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) noexcept { std::free(p); }
  template <class U>
  bool operator==(const aligned_allocator<U>&) const noexcept { return true; }
};
using bf16_vector = std::vector<bf16_t, aligned_allocator<bf16_t>>;

// Round-to-nearest-even fp32 → bf16 of n values (NaN stays NaN).
void to_bf16(const float* src, bf16_t* dst, size_t n);
inline float bf16_to_float(bf16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
bf16_t float_to_bf16(float f);
#if defined(__AVX512F__)
// 16 bf16 values widened to fp32 (a bf16 value is the top half of an fp32 one). The zero-masked
// intrinsics compile to the same two instructions as the plain ones and keep GCC 12 from reporting
// the plain ones' placeholder operand as uninitialised (GCC bug 105593).
inline __m512 widen_bf16x16(const bf16_t* p) {
  const __m512i w = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, w, 16));
}
#endif
// y += g·x for n bf16 values x and fp32 y (a gather's or combine's row).
void add_scaled_bf16(float g, const bf16_t* x, float* y, size_t n);
// s_j = alpha·Σ_i x_i·w_j,i for n rows w_j of k bf16 values (row stride ldw), accumulated in fp32: one
// query against a bf16 KV cache's keys. Each 64-byte load of 32 values gives its even and its odd
// values as fp32 with one shift and one mask (no cross-lane widening), against x split likewise.
void dots_bf16(const float* x, const bf16_t* w, size_t ldw, int n, int k, float alpha, float* s);
// y = Σ_j p_j·w_j (k values, overwritten) for n rows w_j of k bf16 values (row stride ldw), accumulated
// in fp32 registers: a query's output from a bf16 cache's values. The same even/odd widening.
void sum_rows_bf16(const float* p, const bf16_t* w, size_t ldw, int n, int k, float* y);
// x_i ← the fp32 value of bf16(x_i) for n values: what a bf16 copy of x holds.
void round_to_bf16(float* x, size_t n);

// C[M,N] = op(A)·op(B) + beta·C with A, B in bf16 and C in fp32; row-major with row strides lda, ldb,
// ldc of at least the stored row lengths (a wider stride: a column block of a wider matrix, such as
// one half of [dA dB]); beta is 0 or 1. Threads: all OpenMP threads outside a parallel region, one inside.
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B,
               int ldb, float beta, float* C, int ldc);

// C[M,N] = op(A)·op(B) rounded to bf16 (fp32 accumulation), same layout rules; no accumulation into C.
void gemm_bf16_out(bool trans_a, bool trans_b, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B,
                   int ldb, bf16_t* C, int ldc);

// dst = bf16(src) for n values, resized to n, converted on all threads in blocks (serial inside a
// parallel region).
void to_bf16(const float* src, bf16_vector& dst, size_t n);
// dst = fp32(src) for n values (exact), on all threads (serial inside a parallel region).
void from_bf16(const bf16_t* src, float* dst, size_t n);

// dst (cols, rows) = srcᵀ for src (rows, cols), both dense row-major, on all threads (serial inside a
// parallel region). With AVX-512, dst 64-byte aligned, rows a multiple of 32 and cols of 8: 8×8 tiles
// of 16-bit values, four of them stored as whole 64-byte lines with streaming stores (ordinary stores
// to rows 2·rows bytes apart run 3× slower); otherwise element by element in 32×32 blocks.
void transpose_bf16(const bf16_t* src, int rows, int cols, bf16_t* dst);

// Whether the backward's input gradients dy·W (W (N, K) as stored: the A·B layout) run instead as
// dy·(Wᵀ)ᵀ on a transposed bf16 copy of W: A·Bᵀ, the layout the per-shape kernels serve (Bf16Kernels
// below). True in per_shape mode, where gemm:jit's A·B ran 1.1-2.6× slower than brgemm's A·Bᵀ on the
// experts' products (docs/PERFORMANCE.md); the copy costs one transpose per step.
bool bf16_transpose_weights();

// A linear map y = x·Wᵀ (x (T, K), W (N, K), y (T, N)) in mixed precision, and its backward: the GEMM
// inputs in bf16, accumulation, outputs, weights and gradients in fp32. The forward makes W's bf16 copy
// (the weights change at every step) and the backward reuses it; the callers own the bf16 copies of x
// and dy, so that several maps can share one input's copy.
struct Bf16Linear {
  bf16_vector wb;   // W in bf16, made by forward()
  bf16_vector wtb;  // Wᵀ in bf16, made by backward() when bf16_transpose_weights()
  // y = xb·Wᵀ (+ y when accumulate).
  void forward(const bf16_t* xb, int T, int K, const float* W, int N, float* y, bool accumulate = false);
  // dW += dybᵀ·xb; dx = dyb·W (+ dx when accumulate_dx); dx may be null (no input gradient wanted).
  void backward(const bf16_t* dyb, const bf16_t* xb, int T, int K, int N, float* dW, float* dx,
                bool accumulate_dx = false);
};

// How the bf16 GEMMs get their oneDNN kernels:
//   runtime    one primitive per layout with the sizes given at run time: oneDNN's gemm:jit, nothing
//              compiled per shape, every expert size served by the same primitive
//   per_shape  for A·Bᵀ (B as weights are stored, rows of N), one primitive per (layout, M, N, K),
//              made on first use (0.8 ms) and cached: oneDNN then picks its brgemm kernels, which use
//              the AMX tiles where the CPU has them; the other layouts stay on gemm:jit, which uses
//              them as well. The default on CPUs with AMX-BF16, where brgemm ran A·Bᵀ 1.07-1.24x
//              faster than gemm:jit and the other layouts (the backward's) 1.2-1.5x slower.
// MOE_BF16_KERNELS=runtime|per_shape overrides the default.
enum class Bf16Kernels { runtime, per_shape };
template <>
struct EnumNames<Bf16Kernels> {
  static constexpr const char* what = "bf16 kernels";
  static constexpr std::array<const char*, 2> names = {"runtime", "per_shape"};
};
Bf16Kernels default_bf16_kernels();  // MOE_BF16_KERNELS, else per_shape with AMX-BF16, else runtime
Bf16Kernels bf16_kernels();
void set_bf16_kernels(Bf16Kernels k);

// The oneDNN implementation that runs a 1024³-like bf16 matmul in the current mode (e.g. "gemm:jit",
// "brg:avx512_core_amx_bf16"; per_shape: of the latest square one), for reports.
const char* bf16_gemm_impl();
// gemm_bf16 (A·Bᵀ, fp32 output) of n×n×n timed as measure_sgemm times sgemm (core/gemm.h).
GemmRate measure_gemm_bf16(int n = 1024, int samples = 10);

}  // namespace moe
