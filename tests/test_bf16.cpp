// Mixed precision: bf16 rounding, the bf16 GEMM against a double-precision product of the same
// bf16-rounded inputs, the bf16 MoE layer against the fp32 layer (outputs and gradients), and the
// whole model in bf16 (experts, attention's projections, LM head) against the fp32 model.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/rng.h"
#include "model/transformer.h"
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

// Dense and strided (each matrix a column block of a wider one, as [dA | dB] is), every transpose,
// beta 0 and 1, fp32 and bf16 output, kernels for runtime sizes and per shape: the double-precision
// product of the same bf16 inputs.
// Sizes past 64 that are not multiples of it: per shape, M and K are cut into a multiple of 64 and a
// remainder (src/core/bf16.cpp).
TEST(Bf16, GemmMatchesReferenceForEveryTransposeAndStride) {
  const Bf16Kernels was = bf16_kernels();
  for (auto [M, N, K] : {std::array{33, 47, 70}, std::array{130, 47, 135}, std::array{64, 20, 128}})
  for (Bf16Kernels mode : {Bf16Kernels::runtime, Bf16Kernels::per_shape})
  for (int pad : {0, 5}) {
    set_bf16_kernels(mode);
    SCOPED_TRACE(std::string(name_of(mode)) + " M " + std::to_string(M) + " K " + std::to_string(K));
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const int ra = ta ? K : M, ca = ta ? M : K, rb = tb ? N : K, cb = tb ? K : N;
        const int lda = ca + pad, ldb = cb + 2 * pad, ldc = N + 3 * pad;
        std::vector<float> A(static_cast<size_t>(ra) * lda), B(static_cast<size_t>(rb) * ldb);
        fill_normal(A.data(), A.size(), 2, 1, 0.f, 1.f);
        fill_normal(B.data(), B.size(), 2, 2, 0.f, 1.f);
        std::vector<bf16_t> Ab(A.size()), Bb(B.size());
        to_bf16(A.data(), Ab.data(), A.size());
        to_bf16(B.data(), Bb.data(), B.size());
        auto a = [&](int i, int l) { return bf16_to_float(ta ? Ab[l * lda + i] : Ab[i * lda + l]); };
        auto bm = [&](int l, int j) { return bf16_to_float(tb ? Bb[j * ldb + l] : Bb[l * ldb + j]); };
        for (float beta : {0.f, 1.f}) {
          std::vector<float> C(static_cast<size_t>(M) * ldc, 0.5f);
          gemm_bf16(ta, tb, M, N, K, Ab.data(), lda, Bb.data(), ldb, beta, C.data(), ldc);
          std::vector<bf16_t> Cb(static_cast<size_t>(M) * ldc, float_to_bf16(7.f));
          if (beta == 0.f) gemm_bf16_out(ta, tb, M, N, K, Ab.data(), lda, Bb.data(), ldb, Cb.data(), ldc);
          for (int i = 0; i < M; ++i) {
            for (int j = 0; j < N; ++j) {
              double s = beta * 0.5;
              for (int l = 0; l < K; ++l) s += static_cast<double>(a(i, l)) * bm(l, j);
              const auto where = ::testing::Message() << "ta " << ta << " tb " << tb << " beta " << beta << " pad "
                                                      << pad << " at " << i << "," << j;
              ASSERT_NEAR(C[i * ldc + j], s, 1e-4 * (1 + std::fabs(s))) << where;
              if (beta == 0.f) {
                ASSERT_NEAR(bf16_to_float(Cb[i * ldc + j]), s, 8e-3 * (1 + std::fabs(s))) << where;
              }
            }
            for (int j = N; j < ldc; ++j) {  // the padding between rows is left alone
              ASSERT_EQ(C[i * ldc + j], 0.5f);
              ASSERT_EQ(Cb[i * ldc + j], float_to_bf16(7.f));
            }
          }
        }
      }
  }
  set_bf16_kernels(was);
}

// The transpose behind the backward's A·Bᵀ products (bf16_transpose_weights): the tiled AVX-512 path
// (rows a multiple of 32, cols of 8, aligned destination), and element by element for any other shape
// or an unaligned destination.
TEST(Bf16, TransposeMatchesElementByElement) {
  for (auto [rows, cols, offset] : std::vector<std::array<int, 3>>{
           {32, 8, 0}, {64, 40, 0}, {256, 512, 0}, {96, 24, 1}, {33, 7, 0}, {1, 5, 0}, {70, 130, 0}}) {
    std::vector<bf16_t> src(static_cast<size_t>(rows) * cols);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<bf16_t>(i * 2654435761u >> 11);
    bf16_vector dst(src.size() + 1, 0);
    transpose_bf16(src.data(), rows, cols, dst.data() + offset);
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j)
        ASSERT_EQ(dst[static_cast<size_t>(offset) + static_cast<size_t>(j) * rows + i],
                  src[static_cast<size_t>(i) * cols + j])
            << rows << "x" << cols << " (offset " << offset << ") at " << i << "," << j;
  }
}

TEST(Bf16, AddScaledWidensExactly) {
  std::vector<float> x(77), y(77), want(77);
  fill_normal(x.data(), x.size(), 4, 1, 0.f, 3.f);
  fill_normal(y.data(), y.size(), 4, 2, 0.f, 3.f);
  std::vector<bf16_t> xb(x.size());
  to_bf16(x.data(), xb.data(), x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = std::fma(0.75f, bf16_to_float(xb[i]), y[i]);
  add_scaled_bf16(0.75f, xb.data(), y.data(), y.size());  // 16 at a time, then a scalar tail of 13
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], want[i]) << i;
}

// A query against bf16 keys and values (the bf16 KV cache's kernels): dots_bf16 and sum_rows_bf16
// equal the products of the widened values in double to fp32 rounding, for every row width they take
// on the even/odd path (multiples of 32 up to 256, and 1024 for the dots) and for others (the plain
// widening), with a row stride wider than the row.
TEST(Bf16, DotsAndRowSumsOfWidenedRows) {
  for (int k : {8, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 288, 1024}) {
    SCOPED_TRACE("k = " + std::to_string(k));
    const int n = 37;
    const size_t ldw = static_cast<size_t>(k) + 8;
    std::vector<float> x(static_cast<size_t>(k)), p(n), wf(n * ldw), s(n), y(static_cast<size_t>(k), -1.f);
    fill_normal(x.data(), x.size(), 5, 1, 0.f, 1.f);
    fill_normal(p.data(), p.size(), 5, 2, 0.f, 1.f);
    fill_normal(wf.data(), wf.size(), 5, 3, 0.f, 1.f);
    std::vector<bf16_t> w(wf.size());
    to_bf16(wf.data(), w.data(), w.size());
    dots_bf16(x.data(), w.data(), ldw, n, k, 0.5f, s.data());
    sum_rows_bf16(p.data(), w.data(), ldw, n, k, y.data());
    for (int j = 0; j < n; ++j) {
      double want = 0.0, mag = 0.0;
      for (int i = 0; i < k; ++i) {
        const double t = static_cast<double>(x[static_cast<size_t>(i)]) * bf16_to_float(w[j * ldw + static_cast<size_t>(i)]);
        want += t;
        mag += std::fabs(t);
      }
      ASSERT_NEAR(s[static_cast<size_t>(j)], 0.5 * want, 1e-6 * mag) << "dot " << j;
    }
    for (int i = 0; i < k; ++i) {
      double want = 0.0, mag = 0.0;
      for (int j = 0; j < n; ++j) {
        const double t = static_cast<double>(p[static_cast<size_t>(j)]) * bf16_to_float(w[j * ldw + static_cast<size_t>(i)]);
        want += t;
        mag += std::fabs(t);
      }
      ASSERT_NEAR(y[static_cast<size_t>(i)], want, 1e-6 * mag) << "sum " << i;
    }
  }
}

// ‖a − b‖ / ‖b‖ over n values.
double rel_error(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
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
    auto rel = [](const Tensor& a, const Tensor& b) { return rel_error(a.data(), b.data(), b.numel()); };
    // bf16 keeps 8 mantissa bits: relative error ~2^-9 per rounding, a few of them in a row.
    EXPECT_LT(rel(y2, y1), 1e-2) << "G=" << G;
    EXPECT_LT(rel(dx2, dx1), 1e-2) << "G=" << G;
    auto p1 = ref.params(), p2 = mixed.params();
    for (size_t i = 0; i < p1.size(); ++i) EXPECT_LT(rel(*p2[i].grad, *p1[i].grad), 2e-2) << p1[i].name << " G=" << G;
  }
}

// The experts' GEMMs run side by side on the threads. With primitives per shape (oneDNN's brgemm, AMX
// where the CPU has it) each needs its own scratchpad: sharing one, runs gave gradients up to 26% off
// and differed from run to run (seen on a Xeon with AMX). Both kernel modes, each run four times:
// bit-identical run after run, and the two modes equal but for fp32 summation order.
TEST(Bf16, KernelModesAgreeAndRepeatWithExpertsOnThreads) {
  MoeConfig c;
  c.hidden_size = 64;
  c.moe_intermediate_size = 128;
  c.num_local_experts = 8;
  c.num_experts_per_tok = 2;
  c.granularity = 4;
  c.precision = Precision::bf16;
  const int T = 512, d = 64;
  Tensor x({T, d}), dy({T, d});
  fill_normal(x.data(), x.numel(), 3, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 3, 2, 0.f, 1.f);
  const Bf16Kernels before = bf16_kernels();
  std::vector<std::vector<float>> first;  // y, dx and every gradient of each mode's first run
  for (Bf16Kernels mode : {Bf16Kernels::runtime, Bf16Kernels::per_shape}) {
    set_bf16_kernels(mode);
    std::vector<float> ref;
    for (int run = 0; run < 4; ++run) {
      MoeLayer layer(c);
      Tensor y({T, d}), dx({T, d});
      layer.forward(x.data(), T, y.data(), {});
      layer.backward(dy.data(), dx.data());
      std::vector<float> all(y.data(), y.data() + y.numel());
      all.insert(all.end(), dx.data(), dx.data() + dx.numel());
      for (const auto& p : layer.params()) all.insert(all.end(), p.grad->data(), p.grad->data() + p.grad->numel());
      if (run == 0) ref = all;
      ASSERT_EQ(all, ref) << "run " << run << (mode == Bf16Kernels::runtime ? " with runtime sizes" : " per shape");
    }
    first.push_back(ref);
  }
  set_bf16_kernels(before);
  EXPECT_LT(rel_error(first[1].data(), first[0].data(), first[0].size()), 1e-5) << "per_shape against runtime";
}


// precision = bf16 runs the experts, attention's q, k, v and o projections and the LM head in bf16
// (with q/k/v biases, QK-norm and a logit scale, tied and untied heads): the loss, the logits and
// every parameter's gradient stay within bf16's precision of the fp32 model's.
TEST(Bf16, WholeModelMatchesFp32WithinBf16Precision) {
  for (bool tied : {false, true}) {
    ModelConfig c;
    c.vocab_size = 96;
    c.hidden_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.max_position_embeddings = 32;
    c.tie_word_embeddings = tied;
    c.attention_bias = true;
    c.qk_norm = QkNorm::head;
    c.logits_scaling = 1.5f;
    c.moe.moe_intermediate_size = 64;
    c.moe.num_local_experts = 4;
    c.moe.num_experts_per_tok = 2;
    c.moe.n_shared_experts = 1;
    TransformerLM ref(c);
    c.moe.precision = Precision::bf16;
    TransformerLM mixed(c);
    const int B = 4, L = 32, T = B * L;
    std::vector<int32_t> tok(T), tgt(T);
    for (int i = 0; i < T; ++i) {
      tok[static_cast<size_t>(i)] = static_cast<int32_t>((i * 37 + 11) % c.vocab_size);
      tgt[static_cast<size_t>(i)] = static_cast<int32_t>((i * 53 + 5) % c.vocab_size);
    }
    for (TransformerLM* m : {&ref, &mixed}) {
      m->zero_grad();
      m->forward(tok.data(), tgt.data(), B, L, true, 0);
      m->backward();
    }
    SCOPED_TRACE(tied ? "tied" : "untied");
    EXPECT_NEAR(mixed.stats().ce, ref.stats().ce, 1e-2 * ref.stats().ce);
    EXPECT_LT(rel_error(mixed.logits.data(), ref.logits.data(), ref.logits.numel()), 2e-2);
    EXPECT_NE(mixed.logits[0], ref.logits[0]) << "the bf16 model rounds somewhere";
    // The head ran in bf16: the logits are the product of the bf16-rounded final hidden states and
    // head weights (to fp32 accumulation), not the fp32 product.
    const float* head = tied ? mixed.embed.w.data() : mixed.lm_head.data();
    double worst = 0.0;
    for (int t = 0; t < T; t += 7)
      for (int v = 0; v < c.vocab_size; v += 5) {
        double z = 0.0;
        for (int j = 0; j < c.hidden_size; ++j)
          z += static_cast<double>(bf16_to_float(float_to_bf16(mixed.h_final[static_cast<size_t>(t) * c.hidden_size + j]))) *
               bf16_to_float(float_to_bf16(head[static_cast<size_t>(v) * c.hidden_size + j]));
        worst = std::max(worst, std::abs(z / c.logits_scaling - mixed.logits[static_cast<size_t>(t) * c.vocab_size + v]));
      }
    EXPECT_LT(worst, 1e-5);
    auto p1 = ref.params(), p2 = mixed.params();
    ASSERT_EQ(p1.size(), p2.size());
    for (size_t i = 0; i < p1.size(); ++i)
      EXPECT_LT(rel_error(p2[i].grad->data(), p1[i].grad->data(), p1[i].grad->numel()), 3e-2) << p1[i].name;
  }
}

// Attention with bf16 projections: its output and gradients within bf16's precision of fp32's, and
// the q projection is the product of the bf16-rounded input and weights.
TEST(Bf16, AttentionProjectionsInBf16) {
  AttentionConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  Attention ref(c, 5, 1, 0.1f);
  c.bf16 = true;
  Attention mixed(c, 5, 1, 0.1f);
  const int B = 2, L = 16, T = B * L, d = c.hidden_size;
  Tensor x({T, d}), dy({T, d}), y1({T, d}), y2({T, d}), dx1({T, d}), dx2({T, d});
  fill_normal(x.data(), x.numel(), 3, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 3, 2, 0.f, 1.f);
  ref.forward(x.data(), B, L, y1.data());
  ref.backward(dy.data(), dx1.data());
  mixed.forward(x.data(), B, L, y2.data());
  mixed.backward(dy.data(), dx2.data());
  EXPECT_LT(rel_error(y2.data(), y1.data(), y1.numel()), 1e-2);
  EXPECT_LT(rel_error(dx2.data(), dx1.data(), dx1.numel()), 1e-2);
  for (auto [a, b] : {std::pair{&mixed.dwq, &ref.dwq}, {&mixed.dwk, &ref.dwk}, {&mixed.dwv, &ref.dwv}, {&mixed.dwo, &ref.dwo}})
    EXPECT_LT(rel_error(a->data(), b->data(), b->numel()), 2e-2);
  EXPECT_NE(y2[0], y1[0]);
  // v is not rotated or normalised: the bf16 product itself.
  double worst = 0.0;
  for (int t = 0; t < T; t += 3)
    for (int o = 0; o < 32; ++o) {
      double z = 0.0;
      for (int j = 0; j < d; ++j)
        z += static_cast<double>(bf16_to_float(float_to_bf16(x[static_cast<size_t>(t) * d + j]))) *
             bf16_to_float(float_to_bf16(mixed.wv[static_cast<size_t>(o) * d + j]));
      worst = std::max(worst, std::abs(z - mixed.v[static_cast<size_t>(t) * 32 + o]));
    }
  EXPECT_LT(worst, 1e-5);
}

}  // namespace
}  // namespace moe
