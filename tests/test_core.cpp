// Core numerics: RNG independence from the thread count, vector math accuracy, GEMM against a naive
// product, tensor shape checks, safetensors round trip and corrupt-file errors.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/safetensors.h"
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
TEST(Gemm, MatchesNaiveProductForEveryTranspose) {
  const int N = 29, K = 41;
  for (int M : {37, 1}) {
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
}

TEST(Gemm, FastKernelsSelectedByDefault) {
  // On an AVX-512 CPU the SkylakeX-class kernels must be active without the user setting anything.
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512 on this CPU";
  std::string core = blas_core_name();
  EXPECT_TRUE(core == "SkylakeX" || core == "Cooperlake" || core == "Sapphire Rapids") << "OpenBLAS runs " << core;
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

}  // namespace
}  // namespace moe
