// Core numerics: RNG independence from the thread count, vector math accuracy, GEMM against a naive
// product, tensor shape checks, safetensors round trip and corrupt-file errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/half.h"
#include "core/packed.h"
#include "core/safetensors.h"
#include "core/small_gemm.h"
#include "core/storage.h"
#include "core/topk.h"
#include "core/vmath.h"

namespace moe {
namespace {

TEST(Rng, SameNumbersForAnyThreadCount) {
  const size_t n = 100000;
  std::vector<float> a(n), b(n);
  set_num_threads(1);
  fill_normal(a.data(), n, 42, 7, 0.f, 1.f);
  set_num_threads(2);
  fill_normal(b.data(), n, 42, 7, 0.f, 1.f);
  EXPECT_EQ(a, b);
  double mean = 0, var = 0;
  for (float v : a) mean += v;
  mean /= n;
  for (float v : a) var += (v - mean) * (v - mean);
  var /= n;
  EXPECT_NEAR(mean, 0.0, 0.02);
  EXPECT_NEAR(var, 1.0, 0.02);
  fill_normal(b.data(), n, 42, 8, 0.f, 1.f);
  EXPECT_NE(a, b) << "another stream must give other numbers";
}

TEST(Rng, UniformInRange) {
  for (uint64_t i = 0; i < 10000; ++i) {
    float u = rng_uniform(3, 1, i);
    ASSERT_GE(u, 0.f);
    ASSERT_LT(u, 1.f);
  }
}

TEST(Vmath, ExpIsAccurate) {
  for (float x = -80.f; x < 80.f; x += 0.0137f) {
    float want = std::exp(x), got = exp_approx(x);
    ASSERT_NEAR(got, want, 4e-7f * want) << "x = " << x;
  }
  EXPECT_GE(exp_approx(-1000.f), 0.f);
  EXPECT_TRUE(std::isfinite(exp_approx(1000.f)));
}

TEST(Vmath, SoftmaxAndLogsumexp) {
  float s[5] = {1.f, -2.f, 0.5f, 3.f, 100.f}, p[5];
  softmax(s, p, 5);
  double lse = 0;
  for (float v : s) lse += std::exp(static_cast<double>(v) - 100.0);
  lse = 100.0 + std::log(lse);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(p[i], std::exp(s[i] - lse), 1e-6);
  EXPECT_NEAR(logsumexp(s, 5), lse, 1e-5);
}

// exp_minus takes every value through the vector exp (the last vector masked): each must equal the
// scalar exp_approx bit for bit, at every length and across the clamps, NaN staying NaN; nothing past
// n is written.
TEST(Vmath, VectorExpEqualsScalarExpBitForBit) {
  for (int n = 1; n <= 40; ++n) {
    std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n) + 1, 7.f);
    for (int i = 0; i < n; ++i) x[static_cast<size_t>(i)] = -95.f + 190.f * static_cast<float>((i * 7919 + n * 104729) % 1000) / 999.f;
    const float c = n % 3 == 0 ? 0.f : 1.25f;
    exp_minus(x.data(), c, y.data(), n);
    for (int i = 0; i < n; ++i) {
      const float want = exp_approx(x[static_cast<size_t>(i)] - c);
      ASSERT_EQ(std::memcmp(&want, &y[static_cast<size_t>(i)], sizeof want), 0) << "n = " << n << ", i = " << i << ": " << y[static_cast<size_t>(i)] << " against " << want;
    }
    ASSERT_EQ(y[static_cast<size_t>(n)], 7.f) << "written past n = " << n;
  }
  for (float v = -100.f; v < 100.f; v += 0.01f) {
    float got;
    exp_minus(&v, 0.f, &got, 1);
    const float want = exp_approx(v);
    ASSERT_EQ(std::memcmp(&want, &got, sizeof want), 0) << "x = " << v;
  }
  const float nan = std::nanf("");
  float got;
  exp_minus(&nan, 0.f, &got, 1);
  EXPECT_TRUE(std::isnan(got));
}

TEST(Vmath, SoftmaxBackwardAtEveryLength) {
  for (int n = 1; n <= 40; ++n) {
    std::vector<float> p(static_cast<size_t>(n)), dp(static_cast<size_t>(n)), ds(static_cast<size_t>(n) + 1, 7.f);
    for (int i = 0; i < n; ++i) {
      p[static_cast<size_t>(i)] = static_cast<float>((i * 13 + n) % 17) / 17.f;
      dp[static_cast<size_t>(i)] = static_cast<float>((i * 5 + 3 * n) % 11) - 5.f;
    }
    double dot = 0.0;
    for (int i = 0; i < n; ++i) dot += static_cast<double>(p[static_cast<size_t>(i)]) * dp[static_cast<size_t>(i)];
    softmax_backward(p.data(), dp.data(), ds.data(), n);
    for (int i = 0; i < n; ++i)
      ASSERT_NEAR(ds[static_cast<size_t>(i)], p[static_cast<size_t>(i)] * (dp[static_cast<size_t>(i)] - dot), 1e-4) << "n = " << n;
    ASSERT_EQ(ds[static_cast<size_t>(n)], 7.f) << "written past n = " << n;
  }
}

TEST(Vmath, SwigluBackwardMatchesFiniteDifferences) {
  const float a[4] = {-3.f, -0.4f, 0.7f, 2.5f}, b[4] = {0.3f, -1.2f, 2.f, 0.9f}, dh[4] = {1.f, -0.5f, 0.25f, 2.f};
  float da[4], db[4];
  swiglu_backward(a, b, dh, da, db, 4);
  for (int i = 0; i < 4; ++i) {
    const double e = 1e-3;
    auto f = [&](double x, double y) { return x / (1.0 + std::exp(-x)) * y; };
    EXPECT_NEAR(da[i], dh[i] * (f(a[i] + e, b[i]) - f(a[i] - e, b[i])) / (2 * e), 1e-4);
    EXPECT_NEAR(db[i], dh[i] * (f(a[i], b[i] + e) - f(a[i], b[i] - e)) / (2 * e), 1e-4);
  }
}

// Every transpose, with alpha and both betas; M = 1 (one row: the matrix-vector path decoding takes,
// where C's old values, NaN included, must not leak through beta = 0) as well as a block of rows.
// The max a softmax subtracts, over every length and position of the largest value (the vectorised
// max reads 64, then 16, then 1 at a time): a missed max of 200 would overflow exp and give ~88.
TEST(Vmath, LogsumexpFindsTheMaxAtEveryPosition) {
  for (int n : {1, 2, 15, 16, 17, 31, 63, 64, 65, 80, 127, 128, 129, 200}) {
    for (int at = 0; at < n; ++at) {
      std::vector<float> x(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) x[static_cast<size_t>(i)] = static_cast<float>((i * 37) % 11) - 5.f;
      x[static_cast<size_t>(at)] = 200.f;
      double sum = 0.0;
      for (float v : x) sum += std::exp(static_cast<double>(v) - 200.0);
      ASSERT_NEAR(logsumexp(x.data(), n), 200.0 + std::log(sum), 1e-4) << "n = " << n << ", max at " << at;
      std::vector<float> p(x.size());
      softmax(x.data(), p.data(), n);
      ASSERT_NEAR(p[static_cast<size_t>(at)], 1.0 / sum, 1e-6) << "n = " << n << ", max at " << at;
    }
  }
  // A NaN anywhere gives NaN, first or not.
  for (int at : {0, 70}) {
    std::vector<float> x(100, 1.f);
    x[static_cast<size_t>(at)] = std::nanf("");
    EXPECT_TRUE(std::isnan(logsumexp(x.data(), 100))) << "NaN at " << at;
  }
}

// topk_desc's paths (the bit-by-bit k-th key for 17 to 128 scores with k a large share, insertion or
// a partial sort otherwise) against a sort of order_key: ties broken by the lower index, -0 below +0,
// NaN by its bits.
TEST(TopK, EveryPathMatchesTheSortedKeys) {
  for (int n = 1; n <= 140; ++n) {
    std::vector<float> s(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      const uint64_t r = (static_cast<uint64_t>(i) * 2654435761u + static_cast<uint64_t>(n) * 40503u) % 23;
      s[static_cast<size_t>(i)] = r == 0 ? -0.f : r == 1 ? std::nanf("") : r == 2 ? -std::nanf("") : static_cast<float>(r % 9) - 4.f;
    }
    std::vector<uint64_t> keys(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) keys[static_cast<size_t>(i)] = order_key(s[static_cast<size_t>(i)], static_cast<uint32_t>(i));
    std::sort(keys.begin(), keys.end(), std::greater<uint64_t>());
    for (int k : {1, 2, 3, n / 16 + 1, n / 8 + 1, n / 4, n / 2, n - 1, n}) {
      if (k < 1 || k > n) continue;
      std::vector<int32_t> idx(static_cast<size_t>(k), -1);
      topk_desc(s.data(), n, k, idx.data());
      for (int i = 0; i < k; ++i)
        ASSERT_EQ(idx[static_cast<size_t>(i)], static_cast<int32_t>(key_index(keys[static_cast<size_t>(i)])))
            << "n = " << n << ", k = " << k << ", rank " << i;
    }
  }
}

// With each library sgemm can run (core/gemm.h; under oneDNN, 20 rows still run on OpenBLAS and one
// row on sgemv), including row strides wider than the rows, and NaN in C with beta = 0 not leaking through.
TEST(Gemm, MatchesNaiveProductForEveryTranspose) {
  const Fp32Gemm used = fp32_gemm();
  for (Fp32Gemm lib : {Fp32Gemm::openblas, Fp32Gemm::onednn}) {
    set_fp32_gemm(lib);
    SCOPED_TRACE(fp32_gemm_name());
    const int N = 29, K = 41;
    for (int M : {37, 20, 1}) {
      std::vector<float> A(M * K), B(K * N), C(M * N), Cref(M * N);
      fill_normal(A.data(), A.size(), 1, 1, 0.f, 1.f);
      fill_normal(B.data(), B.size(), 1, 2, 0.f, 1.f);
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
          for (float beta : {0.f, 1.f}) {
            // A stored as (M,K) or (K,M); B as (K,N) or (N,K).
            const float old = beta == 0.f ? std::nanf("") : 0.5f, alpha = 0.75f;
            for (int i = 0; i < M; ++i)
              for (int j = 0; j < N; ++j) {
                double s = 0;
                for (int l = 0; l < K; ++l) s += static_cast<double>(ta ? A[l * M + i] : A[i * K + l]) * (tb ? B[j * K + l] : B[l * N + j]);
                Cref[i * N + j] = static_cast<float>(alpha * s + (beta == 0.f ? 0.0 : old));
              }
            std::fill(C.begin(), C.end(), old);
            sgemm(ta, tb, M, N, K, alpha, A.data(), ta ? M : K, B.data(), tb ? K : N, beta, C.data(), N);
            for (int i = 0; i < M * N; ++i) ASSERT_NEAR(C[i], Cref[i], 1e-4) << "M=" << M << " " << ta << tb << " beta " << beta << " at " << i;
          }
    }
    // Row strides past the rows: C's padding stays untouched.
    const int M = 40, lda = K + 3, ldb = N + 5, ldc = N + 7;
    std::vector<float> A(static_cast<size_t>(M) * lda), B(static_cast<size_t>(K) * ldb), C(static_cast<size_t>(M) * ldc, -7.f);
    fill_normal(A.data(), A.size(), 1, 3, 0.f, 1.f);
    fill_normal(B.data(), B.size(), 1, 4, 0.f, 1.f);
    sgemm(false, false, M, N, K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), ldc);
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < ldc; ++j) {
        if (j >= N) {
          ASSERT_EQ(C[static_cast<size_t>(i) * ldc + j], -7.f) << "padding of row " << i << " written";
          continue;
        }
        double ref = 0;
        for (int l = 0; l < K; ++l) ref += static_cast<double>(A[static_cast<size_t>(i) * lda + l]) * B[static_cast<size_t>(l) * ldb + j];
        ASSERT_NEAR(C[static_cast<size_t>(i) * ldc + j], ref, 1e-4) << "strided, at " << i << ", " << j;
      }
  }
  set_fp32_gemm(used);
}

// The library is the CPU's unless MOE_SGEMM names one; a wrong name is a one-line error naming it.
TEST(Gemm, LibraryChosenByCpuOrEnvironment) {
  const char* env = std::getenv("MOE_SGEMM");
  const std::string saved = env ? env : "";
  setenv("MOE_SGEMM", "onednn", 1);
  EXPECT_EQ(default_fp32_gemm(), Fp32Gemm::onednn);
  setenv("MOE_SGEMM", "openblas", 1);
  EXPECT_EQ(default_fp32_gemm(), Fp32Gemm::openblas);
  setenv("MOE_SGEMM", "mkl", 1);
  try {
    default_fp32_gemm();
    ADD_FAILURE() << "MOE_SGEMM=mkl accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("MOE_SGEMM = \"mkl\": use \"openblas\" or \"onednn\""), std::string::npos) << e.what();
  }
  unsetenv("MOE_SGEMM");
  __builtin_cpu_init();
  EXPECT_EQ(default_fp32_gemm(), __builtin_cpu_supports("avx512f") ? Fp32Gemm::onednn : Fp32Gemm::openblas);
  if (env) setenv("MOE_SGEMM", saved.c_str(), 1);
}

// small_gemm against a double-precision product: every register tile (1–6 rows by 1–4 vectors, the
// last one partial), A read as stored and transposed, writing and accumulating; C's entries outside
// the product stay untouched.
TEST(SmallGemm, MatchesNaiveProductForEveryTileAndLayout) {
  for (int m : {1, 5, 6, 13}) {
    for (int n : {1, 16, 17, 40, 64, 130}) {
      for (int k : {1, 7, 64}) {
        const int ldc = n + 3;
        std::vector<float> A(static_cast<size_t>(m) * k), B(static_cast<size_t>(k) * (n + 2)), C(static_cast<size_t>(m) * ldc);
        fill_normal(A.data(), A.size(), 7, 1, 0.f, 1.f);
        fill_normal(B.data(), B.size(), 7, 2, 0.f, 1.f);
        for (int trans = 0; trans < 2; ++trans)
          for (bool acc : {false, true}) {
            const float alpha = 0.625f, old = 0.5f;
            std::fill(C.begin(), C.end(), old);
            // A (m, k) row-major, or the transpose of a (k, m) matrix: the same values in another place.
            std::vector<float> At(A.size());
            for (int i = 0; i < m; ++i)
              for (int p = 0; p < k; ++p) At[static_cast<size_t>(p) * m + i] = A[static_cast<size_t>(i) * k + p];
            if (trans)
              small_gemm(m, n, k, alpha, At.data(), 1, m, B.data(), n + 2, C.data(), ldc, acc);
            else
              small_gemm(m, n, k, alpha, A.data(), k, 1, B.data(), n + 2, C.data(), ldc, acc);
            for (int i = 0; i < m; ++i)
              for (int j = 0; j < ldc; ++j) {
                const float got = C[static_cast<size_t>(i) * ldc + j];
                if (j >= n) {
                  ASSERT_EQ(got, old) << "wrote past column " << n;
                  continue;
                }
                double s = 0.0;
                for (int p = 0; p < k; ++p) s += static_cast<double>(A[static_cast<size_t>(i) * k + p]) * B[static_cast<size_t>(p) * (n + 2) + j];
                ASSERT_NEAR(got, alpha * s + (acc ? old : 0.0), 1e-5 * (1.0 + std::sqrt(k)))
                    << "m=" << m << " n=" << n << " k=" << k << " trans " << trans << " acc " << acc << " at " << i << "," << j;
              }
          }
      }
    }
  }
  // Transposes: whole 16 × 16 blocks (in registers) and the ragged edges, with row strides.
  for (auto [rows, cols] : {std::pair{5, 19}, std::pair{16, 16}, std::pair{40, 37}, std::pair{64, 128}}) {
    const int lds = cols + 3, ldd = rows + 2;
    std::vector<float> src(static_cast<size_t>(rows) * lds), dst(static_cast<size_t>(cols) * ldd, -1.f);
    fill_normal(src.data(), src.size(), 7, 3, 0.f, 1.f);
    transpose_block(src.data(), lds, rows, cols, dst.data(), ldd);
    for (int c = 0; c < cols; ++c) {
      for (int r = 0; r < rows; ++r) ASSERT_EQ(dst[c * ldd + r], src[r * lds + c]) << rows << "x" << cols << " at " << r << "," << c;
      for (int r = rows; r < ldd; ++r) ASSERT_EQ(dst[c * ldd + r], -1.f) << "wrote past row " << rows;
    }
  }
}

TEST(Gemm, FastKernelsSelectedByDefault) {
  // On an AVX-512 CPU the SkylakeX-class kernels must be active without the user setting anything.
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512 on this CPU";
  std::string core = blas_core_name();
  EXPECT_TRUE(core == "SkylakeX" || core == "Cooperlake" || core == "Sapphire Rapids") << "OpenBLAS runs " << core;
  // Told, not guessed: the program runs with the variable its preinit entry started it again with
  // (unless a user set it, or valgrind runs it).
  EXPECT_NE(std::getenv("OPENBLAS_CORETYPE"), nullptr);
}

// Storage is 64-byte aligned, small or large (where its whole 2 MiB pages are marked for huge pages),
// and every byte asked for is writable.
TEST(Storage, AlignedSmallAndLarge) {
  for (size_t bytes : {size_t{4}, size_t{100}, size_t{1} << 20, (size_t{2} << 20) - 4, size_t{2} << 20, (size_t{5} << 20) + 12}) {
    auto* p = static_cast<unsigned char*>(aligned_storage(bytes));
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 64, 0u) << bytes;
    std::memset(p, 0xAB, bytes);
    EXPECT_EQ(p[bytes - 1], 0xAB);
    std::free(p);
  }
  Tensor t({1024, 1024});  // 4 MiB through the same storage, zeroed
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data()) % 64, 0u);
  EXPECT_EQ(t[t.numel() - 1], 0.f);
}

TEST(Tensor, ShapeCheckNamesTheTensor) {
  Tensor t({2, 3});
  EXPECT_EQ(t.numel(), 6u);
  try {
    t.check_shape({3, 2}, "experts.w1");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "experts.w1: shape (2, 3) where (3, 2) is expected");
  }
}

TEST(Tensor, CopiesOfEmptyTensorsStayEmpty) {
  Tensor empty;
  Tensor copy = empty;
  EXPECT_EQ(copy.numel(), 0u);
  std::vector<Tensor> many(3, Tensor());
  EXPECT_EQ(many[2].numel(), 0u);
  Tensor full({2});
  full = empty;
  EXPECT_EQ(full.numel(), 0u);
}

TEST(Safetensors, RoundTripAndMetadata) {
  TensorFile f;
  f.tensors["a"] = Tensor({2, 3});
  for (size_t i = 0; i < 6; ++i) f.tensors["a"][i] = static_cast<float>(i) - 2.5f;
  f.tensors["b"] = Tensor({4});
  f.metadata["config"] = "{\"x\": 1}";
  const std::string path = ::testing::TempDir() + "/rt.safetensors";
  save_safetensors(path, f);
  TensorFile g = load_safetensors(path);
  ASSERT_EQ(g.tensors.size(), 2u);
  EXPECT_EQ(g.tensors["a"].shape(), (std::vector<int64_t>{2, 3}));
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(g.tensors["a"][i], f.tensors["a"][i]);
  EXPECT_EQ(g.metadata["config"], "{\"x\": 1}");
}

TEST(Safetensors, TruncatedAndCorruptFilesGiveClearErrors) {
  TensorFile f;
  f.tensors["w"] = Tensor({64});
  const std::string path = ::testing::TempDir() + "/bad.safetensors";
  save_safetensors(path, f);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& b) { std::ofstream(path, std::ios::binary | std::ios::trunc) << b; };
  write(bytes.substr(0, bytes.size() - 10));
  EXPECT_THROW({
    try { load_safetensors(path); } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
      throw;
    }
  }, Error);
  write(bytes.substr(0, 5));
  EXPECT_THROW(load_safetensors(path), Error);
  std::string corrupt = bytes;
  corrupt[9] = '#';
  write(corrupt);
  EXPECT_THROW({
    try { load_safetensors(path); } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("corrupt JSON header"), std::string::npos) << e.what();
      throw;
    }
  }, Error);
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// fp32 → fp16 of the exporter (float_to_half): known values, rounding to nearest even, overflow to
// infinity, subnormals; and every finite half survives half → float → half unchanged.
TEST(Safetensors, HalfConversionRoundsToNearestEven) {
  EXPECT_EQ(float_to_half(1.f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.f), 0xc000);
  EXPECT_EQ(float_to_half(0.1f), 0x2e66);
  EXPECT_EQ(float_to_half(65504.f), 0x7bff);
  EXPECT_EQ(float_to_half(65519.f), 0x7bff);
  EXPECT_EQ(float_to_half(65520.f), 0x7c00);
  EXPECT_EQ(float_to_half(1e-8f), 0x0000);
  EXPECT_EQ(float_to_half(6e-8f), 0x0001);
  EXPECT_EQ(float_to_half(1.f + 1.f / 2048), 0x3c00);      // halfway, even stays
  EXPECT_EQ(float_to_half(1.f + 3.f / 2048), 0x3c02);      // halfway, odd rounds up
  std::vector<uint16_t> all;
  for (uint32_t h = 0; h < 0x10000; ++h)
    if ((h & 0x7c00u) != 0x7c00u) all.push_back(static_cast<uint16_t>(h));
  SafetensorsEntry e;
  e.dtype = "F16";
  e.numel = all.size();
  e.data = reinterpret_cast<const char*>(all.data());
  std::vector<float> f(all.size());
  convert_to_float(e, 0, all.size(), f.data());
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(float_to_half(f[i]), all[i]) << "half 0x" << std::hex << all[i];
}

// Q8_0 blocks as llama.cpp's quantize_row_q8_0_ref makes them: the largest magnitude maps to ±127, the
// scale is max|x|/127 in fp16, the rest round to nearest (ties away from zero); a zero block stays zero.
TEST(Packed, Q8_0BlockAsLlamaCppQuantizes) {
  float x[kQ8Block];
  for (int i = 0; i < kQ8Block; ++i) x[i] = 0.01f * static_cast<float>(i - 10);
  x[5] = -2.54f;  // max |x|: d = 0.02
  int8_t q[kQ8Block];
  const uint16_t d = quantize_q8_0_block(x, q);
  EXPECT_EQ(d, float_to_half(2.54f / 127.f));
  EXPECT_EQ(q[5], -127);
  for (int i = 0; i < kQ8Block; ++i)
    if (i != 5) {
      EXPECT_EQ(q[i], static_cast<int8_t>(std::roundf(x[i] * (127.f / 2.54f)))) << i;
    }
  EXPECT_EQ(q[11], 1);   // 0.01 / 0.02 = 0.5: a tie, away from zero
  EXPECT_EQ(q[9], -1);
  float zero[kQ8Block] = {};
  EXPECT_EQ(quantize_q8_0_block(zero, q), 0);
  for (int i = 0; i < kQ8Block; ++i) EXPECT_EQ(q[i], 0);
}

// Activations rounded for a Q8_0 product: the largest magnitude to ±127 and the rest to the nearest
// step, ties to even, bit for bit as the scalar definition; a block of zeros gives zeros and scale 0.
TEST(Packed, ActivationBlocksRoundToTheNearestStep) {
  std::vector<float> x(kQ8Block);
  for (uint64_t seed = 0; seed < 50; ++seed) {
    fill_normal(x.data(), x.size(), 12, seed, 0.f, seed % 2 ? 1e-3f : 3.f);
    if (seed == 7) x[5] = -40.f;  // a negative maximum
    if (seed == 8) {              // exact ties: 0.5 and 1.5 steps round to 0 and 2
      x.assign(kQ8Block, 0.f);
      x[0] = 127.f;
      x[1] = 0.5f;
      x[2] = 1.5f;
      x[3] = -2.5f;
    }
    int8_t q[kQ8Block];
    const float d = quantize_activation_block(x.data(), q);
    float amax = 0.f;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    ASSERT_EQ(d, amax / 127.f) << seed;
    const float id = 127.f / amax;
    for (int i = 0; i < kQ8Block; ++i)
      ASSERT_EQ(q[i], static_cast<int8_t>(std::nearbyint(x[static_cast<size_t>(i)] * id))) << seed << " " << i;
    if (seed == 8) {
      EXPECT_EQ(q[0], 127);
      EXPECT_EQ(q[1], 0);
      EXPECT_EQ(q[2], 2);
      EXPECT_EQ(q[3], -2);
    }
  }
  std::fill(x.begin(), x.end(), 0.f);
  int8_t q[kQ8Block];
  EXPECT_EQ(quantize_activation_block(x.data(), q), 0.f);
  for (int i = 0; i < kQ8Block; ++i) EXPECT_EQ(q[i], 0);
}

// A product with a packed matrix equals the double-precision product with the values it holds (its
// unpack), for each format, for the dot-product path (1–8 rows, each as alone) and the panel path (more), with and
// without accumulation, for row lengths with a vector tail (bf16, fp32) and with 1, 2, 3, 4, 8, 10, 16,
// 17 and 32 Q8_0 blocks (groups of 16 blocks: 1, 2, 4 and 8 put several rows in a group, 16 and 32 one
// row in one or two groups, 3, 10 and 17 take the general path; N = 70 rows leave a partial last
// group); and it is the same bit for bit on 1 and 2 threads. The values held are
// the weights rounded: bf16 within 2^-8 relative, Q8_0 within half a step of max|w|/127 plus the
// rounding of that scale to fp16 (2^-11 relative, times 127). Q8_0 multiplies x rounded by
// quantize_activation_block: the reference does too.
TEST(Packed, MatmulEqualsTheProductWithTheHeldValues) {
  for (WeightFormat f : {WeightFormat::fp32, WeightFormat::bf16, WeightFormat::q8_0}) {
    for (int K : {32, 64, 96, 100, 128, 256, 320, 512, 544, 1024}) {
      if (f == WeightFormat::q8_0 && K % kQ8Block != 0) continue;
      SCOPED_TRACE(std::string(name_of(f)) + " K=" + std::to_string(K));
      const int N = 70;
      std::vector<float> W(static_cast<size_t>(N) * K), held(W.size());
      fill_normal(W.data(), W.size(), 7, 1, 0.f, 0.5f);
      PackedMatrix p;
      p.pack(W.data(), N, K, f);
      p.unpack(0, N, held.data());
      EXPECT_EQ(p.bytes(), static_cast<size_t>(std::lround(bytes_per_weight(f) * static_cast<double>(W.size()))));
      for (int r = 0; r < N; ++r) {
        float amax = 0.f;
        for (int i = 0; i < K; ++i) amax = std::max(amax, std::fabs(W[static_cast<size_t>(r) * K + i]));
        for (int i = 0; i < K; ++i) {
          const size_t j = static_cast<size_t>(r) * K + i;
          const float err = std::fabs(held[j] - W[j]);
          // Q8_0: half a step, and the rounding of the scale to fp16.
          const float bound = f == WeightFormat::fp32 ? 0.f : f == WeightFormat::bf16 ? std::fabs(W[j]) / 256.f : amax / 127.f * 0.57f;
          ASSERT_LE(err, bound);
        }
      }
      for (int M : {1, 2, 3, 4, 5, 6, 7, 8, 9, 40}) {
        std::vector<float> x(static_cast<size_t>(M) * K), y0(static_cast<size_t>(M) * (N + 3), 0.25f);
        fill_normal(x.data(), x.size(), 7, 2 + static_cast<uint64_t>(M), 0.f, 1.f);
        std::vector<float> xr = x;  // what the product multiplies
        if (f == WeightFormat::q8_0)
          for (size_t b = 0; b < x.size() / kQ8Block; ++b) {
            int8_t q[kQ8Block];
            const float d = quantize_activation_block(x.data() + b * kQ8Block, q);
            for (int i = 0; i < kQ8Block; ++i) xr[b * kQ8Block + i] = static_cast<float>(q[i]) * d;
          }
        for (bool acc : {false, true}) {
          std::vector<float> y = y0;
          set_num_threads(2);
          p.matmul(x.data(), M, y.data(), N + 3, acc);
          std::vector<float> y1 = y0;
          set_num_threads(1);
          p.matmul(x.data(), M, y1.data(), N + 3, acc);
          set_num_threads(2);
          ASSERT_EQ(y, y1) << "M=" << M << ": 1 and 2 threads differ";
          for (int m = 0; m < M; ++m) {
            for (int r = 0; r < N; ++r) {
              double ref = acc ? 0.25 : 0.0, mag = 0.0;
              for (int i = 0; i < K; ++i) {
                const double t = static_cast<double>(held[static_cast<size_t>(r) * K + i]) * xr[static_cast<size_t>(m) * K + i];
                ref += t;
                mag += std::fabs(t);
              }
              ASSERT_NEAR(y[static_cast<size_t>(m) * (N + 3) + r], ref, 1e-6 * mag + 1e-6) << "M=" << M << " row " << r;
            }
            for (int r = N; r < N + 3; ++r) ASSERT_EQ(y[static_cast<size_t>(m) * (N + 3) + r], 0.25f) << "past the rows";
            if (M <= 8 && !acc) {  // up to 8 rows: each row's numbers are those of the row alone, bit for bit
              std::vector<float> alone(static_cast<size_t>(N));
              p.matmul(x.data() + static_cast<size_t>(m) * K, 1, alone.data(), N);
              for (int r = 0; r < N; ++r) ASSERT_EQ(y[static_cast<size_t>(m) * (N + 3) + r], alone[static_cast<size_t>(r)]) << "M=" << M;
            }
          }
        }
      }
    }
  }
}

// Stacked matrices (W_q over W_k over W_v) packed as one and multiplied into one output per matrix
// give what each matrix packed alone gives: bit for bit on the dot-product path, to rounding on the
// panel path (a panel's rows may straddle two matrices); pack_and_round writes each one's rounding back.
TEST(Packed, StackedMatricesIntoParts) {
  const int K = 64, R[3] = {30, 25, 15};
  for (WeightFormat f : {WeightFormat::fp32, WeightFormat::bf16, WeightFormat::q8_0}) {
    SCOPED_TRACE(name_of(f));
    std::vector<float> W[3], Wr[3];
    PackedMatrix alone[3], stacked;
    for (int i = 0; i < 3; ++i) {
      W[i].resize(static_cast<size_t>(R[i]) * K);
      fill_normal(W[i].data(), W[i].size(), 8, static_cast<uint64_t>(i), 0.f, 1.f);
      Wr[i] = W[i];
      alone[i].pack(W[i].data(), R[i], K, f);
    }
    pack_and_round({{Wr[0].data(), R[0]}, {Wr[1].data(), R[1]}, {Wr[2].data(), R[2]}}, K, f, stacked);
    ASSERT_EQ(stacked.rows(), 70);
    for (int i = 0; i < 3; ++i) {
      std::vector<float> held(W[i].size());
      alone[i].unpack(0, R[i], held.data());
      ASSERT_EQ(Wr[i], held) << "matrix " << i << " rounded back";
    }
    for (int M : {1, 40}) {
      std::vector<float> x(static_cast<size_t>(M) * K);
      fill_normal(x.data(), x.size(), 8, 9, 0.f, 1.f);
      std::vector<float> y[3], ref[3];
      for (int i = 0; i < 3; ++i) {
        y[i].assign(static_cast<size_t>(M) * R[i], 0.f);
        ref[i] = y[i];
        alone[i].matmul(x.data(), M, ref[i].data(), R[i]);
      }
      stacked.matmul(x.data(), M, {{R[0], y[0].data(), R[0]}, {R[1], y[1].data(), R[1]}, {R[2], y[2].data(), R[2]}});
      for (int i = 0; i < 3; ++i)
        for (size_t j = 0; j < y[i].size(); ++j) {
          if (M == 1) {
            ASSERT_EQ(y[i][j], ref[i][j]) << "matrix " << i << " element " << j;
          }
          ASSERT_NEAR(y[i][j], ref[i][j], 1e-5f * (1.f + std::fabs(ref[i][j]))) << "M=" << M << " matrix " << i << " element " << j;
        }
    }
  }
}

TEST(Packed, Q8_0NeedsRowsOfWholeBlocks) {
  std::vector<float> W(4 * 40, 1.f);
  PackedMatrix p;
  try {
    p.pack(W.data(), 4, 40, WeightFormat::q8_0);
    FAIL() << "rows of 40 values packed as Q8_0";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks of 32"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--weights bf16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
