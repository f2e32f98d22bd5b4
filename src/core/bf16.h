// bf16.h — bfloat16 storage and the mixed-precision GEMM: bf16 inputs, fp32 accumulation and output.
//
// The GEMM runs on oneDNN's matmul (Debian's libdnnl), which uses the avx512_bf16 dot-product
// instructions where the CPU has them (about twice the fp32 FLOP rate) and falls back to its own
// kernels elsewhere. Shapes are runtime arguments: one primitive per (transposes, beta) serves every
// expert size, so nothing is compiled per step.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

using bf16_t = uint16_t;

// Round-to-nearest-even fp32 → bf16 of n values (NaN stays NaN).
void to_bf16(const float* src, bf16_t* dst, size_t n);
inline float bf16_to_float(bf16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
bf16_t float_to_bf16(float f);

// C[M,N] = op(A)·op(B) + beta·C with A, B in bf16 and C in fp32; row-major with row strides lda, ldb,
// ldc that must equal the stored row lengths (dense matrices); beta is 0 or 1. Threads: all OpenMP threads outside a parallel region, one inside.
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B,
               int ldb, float beta, float* C, int ldc);

// The oneDNN implementation that runs a bf16 matmul (e.g. "gemm:jit"), for reports.
const char* bf16_gemm_impl();

}  // namespace moe
