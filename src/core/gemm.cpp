#include "core/gemm.h"

#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include <unistd.h>

#include "core/error.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/simd.h"

extern "C" char* openblas_get_corename(void);
extern "C" void openblas_set_num_threads(int);

namespace moe {
namespace {

// OpenBLAS picks its kernels in its constructor from OPENBLAS_CORETYPE, else from the CPU's model,
// which Debian's 0.3.21 does not know for every AVX-512 CPU: on a newer Xeon it falls back to its
// generic Prescott kernels, at a fifth of the speed. So on AVX-512 CPUs the variable is set to
// SkylakeX (Cooperlake with avx512_bf16) unless the user has set it. Setting it in the process itself
// is too late or lost: the executable's .preinit_array runs before any shared library's constructor,
// but glibc then resets the environment to the one the process started with. So this preinit entry
// starts the program again (the same executable, arguments and environment, plus the variable)
// before anything else has run; if that fails, the program goes on with OpenBLAS's own choice.
// Under valgrind it does nothing (its child would run untraced).
void select_blas_kernels(int /*argc*/, char** argv, char** envp) {
#if defined(__x86_64__) && defined(__linux__)
  // The environment from envp: glibc's getenv may not see it yet at this point.
  if (argv == nullptr || envp == nullptr) return;
  std::vector<char*> env;
  for (char** e = envp; *e != nullptr; ++e) {
    if (std::strncmp(*e, "OPENBLAS_CORETYPE=", 18) == 0) return;
    if (std::strncmp(*e, "LD_PRELOAD=", 11) == 0 && std::strstr(*e, "vgpreload") != nullptr) return;
    env.push_back(*e);
  }
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f")) return;
  // Not when the dynamic loader was run as the program (`ld.so build/bin/moe …`): /proc/self/exe is the loader.
  char self[4096];
  const ssize_t len = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len <= 0) return;
  self[len] = '\0';
  if (std::strstr(self, "/ld-linux") != nullptr) return;
  static char core[] = "OPENBLAS_CORETYPE=SKYLAKEX", cooper[] = "OPENBLAS_CORETYPE=COOPERLAKE";
  env.push_back(__builtin_cpu_supports("avx512bf16") ? cooper : core);
  env.push_back(nullptr);
  ::execve("/proc/self/exe", argv, env.data());
#else
  (void)argv;
  (void)envp;
#endif
}

}  // namespace

// Referenced from sgemm() so that any program that multiplies matrices links this entry in.
__attribute__((section(".preinit_array"), used)) void (*const moe_preinit_blas)(int, char**, char**) = select_blas_kernels;

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
  (void)moe_preinit_blas;
  if (M == 0 || N == 0) return;
  if (M == 1 && K > 0) {
    // One row (decoding a token, an expert with one routed row): a matrix-vector product, which reads
    // B once where sgemm would first copy (pack) all of it. The row of A is A[0..K) or, transposed, a
    // column with stride lda.
    const int inc_a = trans_a ? lda : 1;
    if (beta == 0.f) std::fill(C, C + N, 0.f);  // C's old values, NaN included, must not leak through 0·C
    if (trans_b)  // C = A·Bᵀ with B (N, K): C = B·a
      cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, inc_a, beta, C, 1);
    else          // C = A·B with B (K, N): C = Bᵀ·a
      cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A, inc_a, beta, C, 1);
    return;
  }
  // Under oneDNN two kinds of product stay on OpenBLAS:
  //  - a few rows (a short prompt's prefill, a few prompts decoded together): oneDNN compiles its
  //    kernels on first use, tens of milliseconds that a short `generate` would pay whole;
  //  - Aᵀ·B with 1024 rows or more (the weight gradients of wide layers: the LM head's, the experts'
  //    [W1; W3] at h = 1024), which OpenBLAS ran faster on the Xeon measured (docs/PERFORMANCE.md).
  constexpr int kOneDnnMinRows = 32, kOpenBlasTnRows = 1024;
  const bool onednn = fp32_gemm() == Fp32Gemm::onednn && M >= kOneDnnMinRows &&
                      !(trans_a && !trans_b && M >= kOpenBlasTnRows);
  if (onednn) {
    // Row-major, as here. oneDNN runs its own kernels on the OpenMP threads (one inside a parallel
    // region) and writes C directly where beta = 0; OpenBLAS first zeroes C in a pass of its own.
    const dnnl_status_t st =
        dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    MOE_CHECK(st == dnnl_success, "sgemm: oneDNN's dnnl_sgemm failed (status " + std::to_string(st) + ") for " +
                                      std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K));
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

namespace {
std::atomic<Fp32Gemm>& fp32_gemm_in_use() {
  static std::atomic<Fp32Gemm> g{default_fp32_gemm()};
  return g;
}
}  // namespace

Fp32Gemm default_fp32_gemm() {
  if (const std::optional<Fp32Gemm> set = enum_from_env<Fp32Gemm>("MOE_SGEMM")) return *set;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Fp32Gemm::onednn;  // Intel and AMD alike (docs/PERFORMANCE.md)
#endif
  return Fp32Gemm::openblas;
}

Fp32Gemm fp32_gemm() { return fp32_gemm_in_use().load(std::memory_order_relaxed); }
void set_fp32_gemm(Fp32Gemm g) { fp32_gemm_in_use() = g; }

std::string fp32_gemm_name() {
  return fp32_gemm() == Fp32Gemm::onednn ? std::string("oneDNN sgemm") : "OpenBLAS " + blas_core_name();
}

std::string blas_core_name() { return openblas_get_corename(); }

void blas_set_threads(int n) { openblas_set_num_threads(n); }

GemmRate time_gemm(const std::function<void()>& one, int n, int samples) {
  std::vector<double> seconds;
  for (int r = 0; r < samples + 1; ++r) {  // the first call warms up
    auto t0 = std::chrono::steady_clock::now();
    one();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) seconds.push_back(s);
  }
  std::sort(seconds.begin(), seconds.end());
  const double flops = 2.0 * n * n * static_cast<double>(n);
  GemmRate g;
  g.samples = samples;
  g.best = flops / seconds.front() / 1e9;
  g.median = flops / seconds[seconds.size() / 2] / 1e9;
  return g;
}

GemmRate measure_sgemm(int n, int samples) {
  size_t nn = static_cast<size_t>(n) * static_cast<size_t>(n);
  std::vector<float> a(nn), b(nn), c(nn);
  fill_uniform(a.data(), nn, 1, 1, -1.f, 1.f);
  fill_uniform(b.data(), nn, 1, 2, -1.f, 1.f);
  return time_gemm([&] { sgemm(false, true, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n); }, n, samples);
}

Fp32Peak measure_fp32_peak(int n, int samples) {
  const Fp32Gemm used = fp32_gemm();
  Fp32Peak peak;
  for (Fp32Gemm g : {Fp32Gemm::openblas, Fp32Gemm::onednn}) {
    set_fp32_gemm(g);
    const double best = measure_sgemm(n, samples).best;
    if (best > peak.gflops) peak = {best, fp32_gemm_name()};
  }
  set_fp32_gemm(used);
  return peak;
}

double measure_sgemm_gflops(int n, int reps) { return measure_fp32_peak(n, reps).gflops; }

namespace {

// Σ p[i] with four independent vector sums, so that one core's reads, not the latency of its adds,
// bound it, even from L1 (one chain of adds reads 64 bytes per add's latency).
float sum_floats(const float* p, size_t m) {
  size_t i = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (; i + 64 <= m; i += 64)
    for (int k = 0; k < 4; ++k) a[k] = _mm512_add_ps(a[k], _mm512_loadu_ps(p + i + 16 * k));
  s = hsum(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
#endif
  for (; i < m; ++i) s += p[i];
  return s;
}

}  // namespace

double measure_read_gbps(size_t bytes, int reps) {
  const size_t n = bytes / sizeof(float), chunk = size_t{1} << 16, chunks = (n + chunk - 1) / chunk;
  std::vector<float> buf(n, 1.f);
  std::vector<float> part(chunks);
  double best = 0.0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(chunks, [&](size_t c) {
      const float* p = buf.data() + c * chunk;
      const size_t m = std::min(chunk, n - c * chunk);
      part[c] = sum_floats(p, m);
    }, 2);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n * sizeof(float)) / sec / 1e9);
  }
  volatile float sink = part[0];  // the sums are used
  (void)sink;
  return best;
}

}  // namespace moe
