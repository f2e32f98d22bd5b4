// Mixed precision: bf16 rounding, the bf16 GEMM against a double-precision product of the same
// bf16-rounded inputs, and the bf16 MoE layer against the fp32 layer (outputs and gradients).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/bf16.h"
#include "core/rng.h"
#include "moe_cases.h"

namespace moe {
namespace {

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_float(float_to_bf16(3.140625f)), 3.140625f);  // exactly representable
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  std::vector<float> x(1000);
  fill_normal(x.data(), x.size(), 1, 1, 0.f, 10.f);
  std::vector<bf16_t> v(x.size());
  to_bf16(x.data(), v.data(), x.size());  // vectorised path must equal the scalar rounding
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(v[i], float_to_bf16(x[i])) << i;
}

TEST(Bf16, GemmMatchesReferenceForEveryTranspose) {
  const int M = 33, N = 47, K = 70;
  std::vector<float> A(M * K), B(K * N);
  fill_normal(A.data(), A.size(), 2, 1, 0.f, 1.f);
  fill_normal(B.data(), B.size(), 2, 2, 0.f, 1.f);
  std::vector<bf16_t> Ab(A.size()), Bb(B.size());
  to_bf16(A.data(), Ab.data(), A.size());
  to_bf16(B.data(), Bb.data(), B.size());
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (float beta : {0.f, 1.f}) {
        std::vector<float> C(M * N, 0.5f);
        gemm_bf16(ta, tb, M, N, K, Ab.data(), ta ? M : K, Bb.data(), tb ? K : N, beta, C.data(), N);
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < N; ++j) {
            double s = beta * 0.5;
            for (int l = 0; l < K; ++l)
              s += static_cast<double>(bf16_to_float(ta ? Ab[l * M + i] : Ab[i * K + l])) *
                   bf16_to_float(tb ? Bb[j * K + l] : Bb[l * N + j]);
            ASSERT_NEAR(C[i * N + j], s, 1e-4 * (1 + std::fabs(s))) << ta << tb << beta << " at " << i << "," << j;
          }
      }
}

TEST(Bf16, LayerMatchesFp32WithinBf16Precision) {
  for (int G : {1, 4}) {
    MoeConfig c;
    c.hidden_size = 64;
    c.moe_intermediate_size = 128;
    c.num_local_experts = 8;
    c.num_experts_per_tok = 2;
    c.granularity = G;
    c.n_shared_experts = 1;
    c.router_aux_loss_coef = 0.01f;
    MoeLayer ref(c);
    c.precision = Precision::bf16;
    MoeLayer mixed(c);
    const int T = 256, d = 64;
    Tensor x({T, d}), dy({T, d}), y1({T, d}), y2({T, d}), dx1({T, d}), dx2({T, d});
    fill_normal(x.data(), x.numel(), 3, 1, 0.f, 1.f);
    fill_normal(dy.data(), dy.numel(), 3, 2, 0.f, 1.f);
    ref.forward(x.data(), T, y1.data(), {});
    ref.backward(dy.data(), dx1.data());
    mixed.forward(x.data(), T, y2.data(), {});
    mixed.backward(dy.data(), dx2.data());
    ASSERT_EQ(ref.routing().expert, mixed.routing().expert) << "the router is fp32 in both";
    auto rel = [](const Tensor& a, const Tensor& b) {
      double num = 0, den = 0;
      for (size_t i = 0; i < a.numel(); ++i) {
        num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        den += static_cast<double>(b[i]) * b[i];
      }
      return std::sqrt(num / den);
    };
    // bf16 keeps 8 mantissa bits: relative error ~2^-9 per rounding, a few of them in a row.
    EXPECT_LT(rel(y2, y1), 1e-2) << "G=" << G;
    EXPECT_LT(rel(dx2, dx1), 1e-2) << "G=" << G;
    auto p1 = ref.params(), p2 = mixed.params();
    for (size_t i = 0; i < p1.size(); ++i) EXPECT_LT(rel(*p2[i].grad, *p1[i].grad), 2e-2) << p1[i].name << " G=" << G;
  }
}

}  // namespace
}  // namespace moe
