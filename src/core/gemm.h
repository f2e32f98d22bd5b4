// gemm.h — single-precision GEMM, row-major, through one of two libraries (Fp32Gemm below):
// OpenBLAS's CBLAS (OpenMP build) or oneDNN's sgemm. Single rows always go to OpenBLAS's sgemv.
//
// The fast kernels are the default: on an x86-64 CPU with AVX-512, OpenBLAS is told to use its
// SkylakeX (or, with avx512_bf16, Cooperlake) kernels before the library initialises, unless the user
// has set OPENBLAS_CORETYPE. Without this Debian's OpenBLAS picks its Haswell kernels on some AVX-512
// AMD CPUs (about half speed) and its generic Prescott ones on Xeons newer than it knows (a fifth).
// See gemm.cpp for how (an ELF .preinit_array entry that starts the program again with the variable).
#pragma once
#include <array>
#include <functional>
#include <string>

#include "core/enum_names.h"

namespace moe {

// The library behind sgemm. Each is deterministic for a given thread count, but the two round
// differently, so a run keeps one: MOE_SGEMM=openblas|onednn, else the CPU's default: oneDNN on
// x86-64 CPUs with AVX-512 (measured faster on an AMX Xeon and on an AMD EPYC, docs/PERFORMANCE.md),
// OpenBLAS elsewhere. With oneDNN, products of fewer than 32 rows (oneDNN's first call compiles its
// kernels) and Aᵀ·B products of 1024 rows or more (faster on OpenBLAS) still run on OpenBLAS; `moe
// generate` sets OpenBLAS for prefills too small to repay oneDNN's compile (apps/moe/cmd_generate.cpp).
enum class Fp32Gemm { openblas, onednn };
template <>
struct EnumNames<Fp32Gemm> {
  static constexpr const char* what = "fp32 GEMM library";
  static constexpr std::array<const char*, 2> names = {"openblas", "onednn"};
};
Fp32Gemm default_fp32_gemm();
Fp32Gemm fp32_gemm();
void set_fp32_gemm(Fp32Gemm g);  // for benchmarks that time both
// The kernels sgemm runs now, for reports: "OpenBLAS Cooperlake", "oneDNN sgemm".
std::string fp32_gemm_name();

// C[M,N] = alpha * op(A) * op(B) + beta * C, all row-major; op(X) = X or Xᵀ.
// lda/ldb/ldc are the row strides of A, B and C as stored.
void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

// The kernel family OpenBLAS runs (e.g. "SkylakeX", "Cooperlake", "Haswell").
std::string blas_core_name();
void blas_set_threads(int n);

// The rate of `samples` timed n×n×n multiplications after one warm-up call, in GFLOP/s: the best
// (the machine's peak) and the median (what a run can count on while the machine is shared).
struct GemmRate {
  double best = 0.0, median = 0.0;
  int samples = 0;
};
// Times `one()`, a multiplication of 2·n³ FLOPs, that way.
GemmRate time_gemm(const std::function<void()>& one, int n, int samples);
// The fp32 sgemm (A·Bᵀ, as the layers call it) on the current thread count, with the library in use.
GemmRate measure_sgemm(int n = 1024, int samples = 10);
// The fp32 peak that benchmarks and the trainer's MFU report against: measure_sgemm's best with each
// library, the better of the two (whichever is in use), and the kernels that reached it.
struct Fp32Peak {
  double gflops = 0.0;
  std::string kernel;
};
Fp32Peak measure_fp32_peak(int n = 1024, int samples = 10);
double measure_sgemm_gflops(int n = 1024, int reps = 10);  // measure_fp32_peak's GFLOP/s
// The read bandwidth on the current thread count, in GB/s: the best of `reps` parallel sums over a
// buffer of `bytes`, written first (its pages faulted in). With the default size, far larger than
// most caches, the memory's: the denominator of decoding's memory-bandwidth bound. With the size of
// what a decoded token reads, re-read `reps` times: the rate from wherever those bytes stay between
// tokens (the caches, for a small model), the denominator of decoding's in-cache bound.
double measure_read_gbps(size_t bytes = size_t{256} << 20, int reps = 5);

}  // namespace moe
