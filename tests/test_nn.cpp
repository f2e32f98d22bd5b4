// The dense blocks of src/nn: finite differences and PyTorch parity (tests/torch_ref/nn_ref.py) for
// RMSNorm, causal attention with RoPE (multi-head and grouped-query) and cross-entropy; embedding
// lookups and their errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "nn/attention.h"
#include "nn/attention_core.h"
#include "nn/cross_entropy.h"
#include "nn/embedding.h"
#include "nn/rmsnorm.h"

namespace moe {
namespace {

// Central differences of J at `samples` entries of v against the analytic gradient g.
void check_fd(Tensor& v, const Tensor& g, const std::function<double()>& J, const std::string& what,
              double eps = 1e-2, size_t samples = 24) {
  const size_t n = v.numel();
  for (size_t s = 0; s < std::min(n, samples); ++s) {
    const size_t i = n <= samples ? s : static_cast<size_t>(rng_uniform(5, 9, s) * static_cast<float>(n)) % n;
    const float orig = v[i];
    v[i] = orig + static_cast<float>(eps);
    const double jp = J();
    v[i] = orig - static_cast<float>(eps);
    const double jm = J();
    v[i] = orig;
    const double fd = (jp - jm) / (2 * eps), an = g[i];
    EXPECT_NEAR(an, fd, 2e-3 + 2e-2 * std::max(std::fabs(fd), std::fabs(an))) << what << "[" << i << "]";
  }
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (size_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Run the PyTorch reference on `in`; returns its outputs.
TensorFile torch_reference(const std::string& name, const TensorFile& in) {
  const std::string dir = ::testing::TempDir();
  const std::string case_path = dir + "/nn_" + name + ".safetensors", out_path = dir + "/nn_" + name + ".out.safetensors";
  save_safetensors(case_path, in);
  const std::string cmd = std::string(MOE_TORCH_PYTHON) + " " + MOE_SOURCE_DIR + "/tests/torch_ref/nn_ref.py " +
                          case_path + " " + out_path;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << "the PyTorch reference failed: " << cmd;
  return load_safetensors(out_path);
}

void expect_close(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  double scale = 0;
  for (size_t i = 0; i < want.numel(); ++i) scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
  for (size_t i = 0; i < want.numel(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-4 * std::fabs(want[i]) + 1e-5 * scale) << what << "[" << i << "]";
}

TEST(RMSNorm, GradientsAndParity) {
  const int T = 6, d = 16;
  RMSNorm norm(d, 1e-5f);
  fill_normal(norm.w.data(), d, 1, 1, 1.f, 0.3f);
  Tensor x({T, d}), dy({T, d}), y({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 1, 2, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 1, 3, 0.f, 1.f);
  norm.forward(x.data(), T, y.data());
  norm.backward(dy.data(), dx.data());
  Tensor dw = norm.dw;
  auto J = [&] {
    Tensor yy({T, d});
    norm.forward(x.data(), T, yy.data());
    return dot(yy, dy);
  };
  check_fd(x, dx, J, "rmsnorm dx", 1e-3);
  check_fd(norm.w, dw, J, "rmsnorm dw", 1e-3);

  TensorFile in;
  in.metadata["module"] = "rmsnorm";
  in.metadata["config"] = "{\"eps\": 1e-5}";
  in.tensors["x"] = x;
  in.tensors["dy"] = dy;
  in.tensors["w"] = norm.w;
  TensorFile ref = torch_reference("rmsnorm", in);
  expect_close(y, ref.tensors.at("y"), "y");
  expect_close(dx, ref.tensors.at("dx"), "dx");
  expect_close(dw, ref.tensors.at("grad.w"), "dw");
}

struct AttnCase {
  const char* name;
  int heads, kv_heads;
  bool bias = false;                // Qwen2's q/k/v biases
  QkNorm qk_norm = QkNorm::none;    // Qwen3 (head), OLMoE (full)
  float attention_multiplier = 0.f; // GraniteMoE's fixed score scale
};

void PrintTo(const AttnCase& c, std::ostream* os) { *os << c.name; }

class AttentionTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionTest, GradientsAndParity) {
  const AttnCase& ac = GetParam();
  AttentionConfig c;
  c.hidden_size = 16;
  c.num_attention_heads = ac.heads;
  c.num_key_value_heads = ac.kv_heads;
  c.head_dim = 8;
  c.bias = ac.bias;
  c.qk_norm = ac.qk_norm;
  c.attention_multiplier = ac.attention_multiplier;
  const int B = 2, L = 5, T = B * L, d = c.hidden_size;
  Attention attn(c, 3, 10, 0.3f);
  // Biases and norm weights away from their initial 0 and 1, so that their gradients are tested.
  for (Tensor* t : {&attn.bq, &attn.bk, &attn.bv}) fill_normal(t->data(), t->numel(), 5, t->numel(), 0.f, 0.2f);
  for (RMSNorm* n : {&attn.q_norm, &attn.k_norm}) fill_normal(n->w.data(), n->w.numel(), 6, n->w.numel(), 1.f, 0.3f);
  Tensor x({T, d}), dy({T, d}), y({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 2, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 2, 2, 0.f, 1.f);
  attn.forward(x.data(), B, L, y.data());
  attn.backward(dy.data(), dx.data());
  const Tensor dwq = attn.dwq, dwk = attn.dwk, dwv = attn.dwv, dwo = attn.dwo;
  const Tensor dbq = attn.dbq, dbk = attn.dbk, dbv = attn.dbv, dqn = attn.q_norm.dw, dkn = attn.k_norm.dw;
  auto J = [&] {
    Tensor yy({T, d});
    attn.forward(x.data(), B, L, yy.data());
    return dot(yy, dy);
  };
  check_fd(x, dx, J, "attention dx");
  check_fd(attn.wq, dwq, J, "attention dwq");
  check_fd(attn.wk, dwk, J, "attention dwk");
  check_fd(attn.wv, dwv, J, "attention dwv");
  check_fd(attn.wo, dwo, J, "attention dwo");
  if (ac.bias) {
    check_fd(attn.bq, dbq, J, "attention dbq");
    check_fd(attn.bk, dbk, J, "attention dbk");
    check_fd(attn.bv, dbv, J, "attention dbv");
  }
  if (ac.qk_norm != QkNorm::none) {
    check_fd(attn.q_norm.w, dqn, J, "attention dq_norm");
    check_fd(attn.k_norm.w, dkn, J, "attention dk_norm");
  }

  // Causality: the output of position 0 of each sequence depends on nothing after it.
  Tensor x2 = x, y2({T, d});
  for (int j = 0; j < d; ++j) x2[static_cast<size_t>(L - 1) * d + j] += 1.f;
  attn.forward(x2.data(), B, L, y2.data());
  for (int t = 0; t < L - 1; ++t)
    for (int j = 0; j < d; ++j) ASSERT_FLOAT_EQ(y2[t * d + j], y[t * d + j]) << "token " << t << " saw the future";

  TensorFile in;
  in.metadata["module"] = "attention";
  in.metadata["config"] = "{\"B\": 2, \"L\": 5, \"n_heads\": " + std::to_string(c.num_attention_heads) + ", \"n_kv_heads\": " +
                          std::to_string(c.kv_heads()) + ", \"head_dim\": 8, \"rope_theta\": 10000.0, \"qk_norm\": \"" +
                          name_of(c.qk_norm) + "\", \"norm_eps\": 1e-5, \"scale\": " + std::to_string(c.scale()) + "}";
  in.tensors["x"] = x;
  in.tensors["dy"] = dy;
  in.tensors["wq"] = attn.wq;
  in.tensors["wk"] = attn.wk;
  in.tensors["wv"] = attn.wv;
  in.tensors["wo"] = attn.wo;
  if (ac.bias) in.tensors["bq"] = attn.bq, in.tensors["bk"] = attn.bk, in.tensors["bv"] = attn.bv;
  if (ac.qk_norm != QkNorm::none) in.tensors["q_norm"] = attn.q_norm.w, in.tensors["k_norm"] = attn.k_norm.w;
  TensorFile ref = torch_reference(std::string("attention_") + ac.name, in);
  expect_close(y, ref.tensors.at("y"), "y");
  expect_close(dx, ref.tensors.at("dx"), "dx");
  expect_close(dwq, ref.tensors.at("grad.wq"), "dwq");
  expect_close(dwk, ref.tensors.at("grad.wk"), "dwk");
  expect_close(dwv, ref.tensors.at("grad.wv"), "dwv");
  expect_close(dwo, ref.tensors.at("grad.wo"), "dwo");
  if (ac.bias) {
    expect_close(dbq, ref.tensors.at("grad.bq"), "dbq");
    expect_close(dbk, ref.tensors.at("grad.bk"), "dbk");
    expect_close(dbv, ref.tensors.at("grad.bv"), "dbv");
  }
  if (ac.qk_norm != QkNorm::none) {
    expect_close(dqn, ref.tensors.at("grad.q_norm"), "dq_norm");
    expect_close(dkn, ref.tensors.at("grad.k_norm"), "dk_norm");
  }
}

INSTANTIATE_TEST_SUITE_P(Heads, AttentionTest,
                         ::testing::Values(AttnCase{"mha", 4, 0}, AttnCase{"gqa", 4, 2}, AttnCase{"mqa", 2, 1},
                                           AttnCase{"qwen2_bias", 4, 2, true},
                                           AttnCase{"qwen3_head_norm", 4, 2, false, QkNorm::head},
                                           AttnCase{"olmoe_full_norm", 4, 4, false, QkNorm::full},
                                           AttnCase{"granite_scale", 4, 2, true, QkNorm::none, 0.2f}),
                         [](const ::testing::TestParamInfo<AttnCase>& pi) { return std::string(pi.param.name); });

// A batch of 9 sequences runs the fused core with a task per sequence (all its heads, at up to two
// threads); one sequence alone runs a task per head. Each sequence's output and input gradient must
// come out the same either way, with grouped query heads sharing their keys and values (to the
// rounding of the projections' GEMMs, which may take another library for 30 rows than for 270).
TEST(Attention, BatchOfSequencesMatchesEachSequenceAlone) {
  AttentionConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  const int B = 9, L = 30, T = B * L, d = c.hidden_size;
  Attention attn(c, 3, 64, 0.3f);
  Tensor x({T, d}), dy({T, d}), y({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 2, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 2, 2, 0.f, 1.f);
  attn.forward(x.data(), B, L, y.data());
  attn.backward(dy.data(), dx.data());
  Tensor y1({L, d}), dx1({L, d});
  for (int b = 0; b < B; ++b) {
    const size_t o = static_cast<size_t>(b) * L * d;
    attn.forward(x.data() + o, 1, L, y1.data());
    attn.backward(dy.data() + o, dx1.data());
    for (size_t i = 0; i < y1.numel(); ++i) {
      ASSERT_NEAR(y[o + i], y1[i], 1e-4f * (1.f + std::fabs(y1[i]))) << "sequence " << b << ", y[" << i << "]";
      ASSERT_NEAR(dx[o + i], dx1[i], 1e-4f * (1.f + std::fabs(dx1[i]))) << "sequence " << b << ", dx[" << i << "]";
    }
  }
}

// The fused causal attention of one (sequence, head) against a double-precision reference: o and the
// rows' normalisers, and the backward's dq, dk, dv for two query heads sharing their keys and values (dk, dv accumulate),
// at lengths inside one causal block, on its edges and across several, head widths under, between
// and at whole AVX-512 vectors, and heads side by side in their rows (the row strides of a batch).
TEST(AttentionCore, MatchesTheUnfusedProductInDouble) {
  for (int L : {1, 5, kCausalBlock, kCausalBlock + 1, 40, 128}) {
    for (int hd : {2, 24, 64}) {
      SCOPED_TRACE("L=" + std::to_string(L) + " hd=" + std::to_string(hd));
      const int ldq = 2 * hd + 3, ldkv = hd + 1;  // two query heads over one key/value head
      const float scale = 0.7f / std::sqrt(static_cast<float>(hd));
      std::vector<float> q(static_cast<size_t>(L) * ldq), k(static_cast<size_t>(L) * ldkv), v(k.size()), dout(q.size());
      fill_normal(q.data(), q.size(), 8, 1, 0.f, 1.f);
      fill_normal(k.data(), k.size(), 8, 2, 0.f, 1.f);
      fill_normal(v.data(), v.size(), 8, 3, 0.f, 1.f);
      fill_normal(dout.data(), dout.size(), 8, 4, 0.f, 1.f);
      std::vector<float> lse(static_cast<size_t>(2) * L), o(q.size(), 0.f), dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
      for (int h = 0; h < 2; ++h)
        causal_attention_forward(L, 0, hd, scale, q.data() + h * hd, ldq, k.data(), v.data(), ldkv, o.data() + h * hd, lse.data() + h * L);
      for (int h = 0; h < 2; ++h)
        causal_attention_backward(L, hd, scale, q.data() + h * hd, ldq, k.data(), v.data(), ldkv, lse.data() + h * L,
                                  dout.data() + h * hd, dq.data() + h * hd, dk.data(), dv.data());
      std::vector<double> rdk(static_cast<size_t>(L) * hd, 0.0), rdv(rdk.size(), 0.0);
      for (int h = 0; h < 2; ++h) {
        auto Q = [&](int i, int c) { return static_cast<double>(q[static_cast<size_t>(i) * ldq + h * hd + c]); };
        auto K = [&](int j, int c) { return static_cast<double>(k[static_cast<size_t>(j) * ldkv + c]); };
        auto V = [&](int j, int c) { return static_cast<double>(v[static_cast<size_t>(j) * ldkv + c]); };
        auto DO = [&](int i, int c) { return static_cast<double>(dout[static_cast<size_t>(i) * ldq + h * hd + c]); };
        for (int i = 0; i < L; ++i) {
          std::vector<double> p(static_cast<size_t>(i) + 1), dp(p.size());
          double mx = -1e300, sum = 0.0;
          for (int j = 0; j <= i; ++j) {
            double s = 0.0;
            for (int c = 0; c < hd; ++c) s += Q(i, c) * K(j, c);
            p[j] = scale * s;
            mx = std::max(mx, p[j]);
          }
          for (int j = 0; j <= i; ++j) sum += p[j] = std::exp(p[j] - mx);
          ASSERT_NEAR(lse[static_cast<size_t>(h) * L + i], mx + std::log(sum), 1e-5 * (1.0 + std::fabs(mx))) << "lse[" << i << "]";
          double pdp = 0.0;
          for (int j = 0; j <= i; ++j) {
            p[j] /= sum;
            double s = 0.0;
            for (int c = 0; c < hd; ++c) s += DO(i, c) * V(j, c);
            dp[j] = s;
            pdp += p[j] * s;
          }
          for (int c = 0; c < hd; ++c) {
            double oc = 0.0, dqc = 0.0;
            for (int j = 0; j <= i; ++j) {
              const double ds = p[j] * (dp[j] - pdp);
              oc += p[j] * V(j, c);
              dqc += scale * ds * K(j, c);
              rdk[static_cast<size_t>(j) * hd + c] += scale * ds * Q(i, c);
              rdv[static_cast<size_t>(j) * hd + c] += p[j] * DO(i, c);
            }
            ASSERT_NEAR(o[static_cast<size_t>(i) * ldq + h * hd + c], oc, 1e-4) << "o[" << i << "," << c << "]";
            ASSERT_NEAR(dq[static_cast<size_t>(i) * ldq + h * hd + c], dqc, 1e-4) << "dq[" << i << "," << c << "]";
          }
        }
      }
      for (int j = 0; j < L; ++j) {
        for (int c = 0; c < hd; ++c) {
          ASSERT_NEAR(dk[static_cast<size_t>(j) * ldkv + c], rdk[static_cast<size_t>(j) * hd + c], 2e-4) << "dk[" << j << "," << c << "]";
          ASSERT_NEAR(dv[static_cast<size_t>(j) * ldkv + c], rdv[static_cast<size_t>(j) * hd + c], 2e-4) << "dv[" << j << "," << c << "]";
        }
        ASSERT_EQ(dk[static_cast<size_t>(j) * ldkv + hd], 0.f) << "wrote past the head";
      }
    }
  }
}

// A rolled cache (context shift): after shift_cache(keep, discard) the cache holds the first `keep`
// positions and the last ones moved down, each key rotated to its new position: what a fresh cache of
// those rows of x would hold (to fp32 rounding; in a bf16 cache the keys to one bf16 rounding, as they
// are rotated in fp32 and rounded again), with QK-norm and GQA. Then decoding goes on
// from it as from the fresh cache.
TEST(Attention, RolledCacheHoldsTheNewPositions) {
  AttentionConfig c;
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.qk_norm = QkNorm::head;
  for (Precision kv : {Precision::fp32, Precision::bf16}) {
    SCOPED_TRACE(std::string("KV cache ") + name_of(kv));
    const bool bf = kv == Precision::bf16;
    Attention attn(c, 3, 11, 0.3f);
    attn.set_kv_cache(kv);
    const int n = 16, d = c.hidden_size, keep = 2, discard = 7, left = n - discard;
    Tensor x({n + 1, d}), y({n, d});
    fill_normal(x.data(), x.numel(), 4, 1, 0.f, 1.f);
    Attention::Cache rolled, fresh;
    attn.forward_cached(x.data(), n, rolled, n + 1, y.data());
    attn.shift_cache(rolled, keep, discard);
    ASSERT_EQ(rolled.len, left);
    Tensor xs({left + 1, d});  // rows 0..keep-1 and keep+discard..n-1 of x, then the next token
    for (int r = 0; r < left + 1; ++r) {
      const int from = r < keep ? r : r + discard;
      std::copy(x.data() + static_cast<size_t>(from) * d, x.data() + static_cast<size_t>(from + 1) * d, xs.data() + static_cast<size_t>(r) * d);
    }
    Tensor ys({left, d});
    attn.forward_cached(xs.data(), left, fresh, n + 1, ys.data());
    ASSERT_EQ(bf ? rolled.kb.size() : rolled.k.numel(), static_cast<size_t>(c.kv_heads()) * rolled.cap * c.hd());
    ASSERT_EQ(bf ? rolled.k.numel() : rolled.kb.size(), 0u) << "a cache holds one format";
    auto key = [&](const Attention::Cache& a, size_t i) { return bf ? bf16_to_float(a.kb[i]) : a.k[i]; };
    auto value = [&](const Attention::Cache& a, size_t i) { return bf ? bf16_to_float(a.vb[i]) : a.v[i]; };
    for (int g = 0; g < c.kv_heads(); ++g)
      for (int i = 0; i < left * c.hd(); ++i) {
        const size_t r = rolled.at(g, 0) + static_cast<size_t>(i), f = fresh.at(g, 0) + static_cast<size_t>(i);
        // A rotation mixes each pair of a key: its rounding error is relative to the key's largest entry.
        float key_mag = 0.f;
        for (int j = 0; j < c.hd(); ++j) key_mag = std::max(key_mag, std::fabs(key(fresh, f - f % c.hd() + j)));
        ASSERT_NEAR(key(rolled, r), key(fresh, f), bf ? std::ldexp(key_mag, -7) : 1e-5f) << "head " << g << ", key " << i;
        const float v = value(fresh, f);  // the projections of 16 rows and of 9: BLAS's kernels may differ in the last bit
        ASSERT_NEAR(value(rolled, r), v, bf ? 1e-6f + std::ldexp(std::fabs(v), -7) : 1e-6f * (1.f + std::fabs(v)))
            << "head " << g << ", value " << i;
      }
    Tensor y1({1, d}), y2({1, d});
    attn.forward_cached(xs.data() + static_cast<size_t>(left) * d, 1, rolled, n + 1, y1.data());
    attn.forward_cached(xs.data() + static_cast<size_t>(left) * d, 1, fresh, n + 1, y2.data());
    for (int j = 0; j < d; ++j) {
      const float want = y2[static_cast<size_t>(j)];
      EXPECT_NEAR(y1[static_cast<size_t>(j)], want, bf ? std::ldexp(1.f + std::fabs(want), -7) : 1e-5f) << "output " << j;
    }
  }
}

// A bf16 KV cache decodes the model whose keys and values are rounded to bf16: forward (which then
// rounds k and v) and forward_cached agree to fp32 rounding, for decoding one token at a time (the dot
// products over bf16 keys) and for prompts of a causal block or more (the fused core over the widened
// cache), after positions already cached; GQA, biases and QK-norm on. The rounding moves the output,
// by about bf16's precision. A cache filled in one format refuses tokens in the other.
TEST(Attention, Bf16KvCacheDecodesAsTheRoundedForward) {
  AttentionConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.bias = true;
  c.qk_norm = QkNorm::head;
  const int n = 70, d = c.hidden_size;
  Tensor x({n, d});
  fill_normal(x.data(), x.numel(), 6, 1, 0.f, 1.f);
  Attention attn(c, 5, 11, 0.3f);
  for (Tensor* b : {&attn.bq, &attn.bk, &attn.bv}) fill_normal(b->data(), b->numel(), 6, 2, 0.f, 0.3f);
  Tensor exact({n, d}), rounded({n, d});
  attn.forward(x.data(), 1, n, exact.data());
  attn.set_kv_cache(Precision::bf16);
  attn.forward(x.data(), 1, n, rounded.data());
  double moved = 0.0, mag = 0.0;
  for (size_t i = 0; i < exact.numel(); ++i) {
    moved = std::max(moved, static_cast<double>(std::fabs(rounded[i] - exact[i])));
    mag = std::max(mag, static_cast<double>(std::fabs(exact[i])));
  }
  EXPECT_GT(moved, 0.0) << "the bf16 cache's rounding changed nothing";
  EXPECT_LT(moved, 0.02 * mag);
  Attention::Cache cache;
  Tensor y({n, d});
  int pos = 0;
  for (int m : {3, 1, 1, 30, 1, 3, kCausalBlock + 5, 1, 1}) {  // a block or more: the fused core
    attn.forward_cached(x.data() + static_cast<size_t>(pos) * d, m, cache, n, y.data() + static_cast<size_t>(pos) * d);
    pos += m;
  }
  ASSERT_EQ(pos, n);
  for (size_t i = 0; i < y.numel(); ++i)
    ASSERT_NEAR(y[i], rounded[i], 1e-5 * (1.0 + mag)) << "row " << i / static_cast<size_t>(d);
  EXPECT_EQ(cache.kb.size(), static_cast<size_t>(c.kv_heads()) * cache.cap * c.hd());
  attn.set_kv_cache(Precision::fp32);
  try {
    attn.forward_cached(x.data(), 1, cache, n + 1, y.data());
    FAIL() << "an fp32 token into a filled bf16 cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("set_kv_cache"), std::string::npos) << e.what();
  }
  Attention::Cache empty_after = cache;
  empty_after.len = 0;  // an emptied cache starts over in the new format
  attn.forward_cached(x.data(), 2, empty_after, n, y.data());
  EXPECT_TRUE(empty_after.kb.empty());
  EXPECT_EQ(empty_after.len, 2);
}

TEST(Attention, BadConfigNamesTheField) {
  AttentionConfig c;
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 3;
  try {
    Attention a(c, 1, 1, 0.02f);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_key_value_heads"), std::string::npos) << e.what();
  }
}

TEST(CrossEntropy, GradientsParityAndIgnoredPositions) {
  const int T = 7, V = 11;
  Tensor z({T, V}), dz({T, V});
  fill_normal(z.data(), z.numel(), 4, 1, 0.f, 2.f);
  std::vector<int32_t> tg = {3, 0, kIgnoreIndex, 10, 5, 5, kIgnoreIndex};
  const double loss = cross_entropy(z.data(), tg.data(), T, V, dz.data());
  for (int v = 0; v < V; ++v) {
    EXPECT_EQ(dz[2 * V + v], 0.f);
    EXPECT_EQ(dz[6 * V + v], 0.f);
  }
  auto J = [&] { return cross_entropy(z.data(), tg.data(), T, V, nullptr); };
  check_fd(z, dz, J, "cross-entropy dlogits", 1e-3, 40);
  TensorFile in;
  in.metadata["module"] = "cross_entropy";
  in.tensors["x"] = z;
  Tensor targets({T});
  for (int t = 0; t < T; ++t) targets[t] = static_cast<float>(tg[t]);
  in.tensors["targets"] = targets;
  TensorFile ref = torch_reference("cross_entropy", in);
  EXPECT_NEAR(loss, ref.tensors.at("loss")[0], 1e-5);
  expect_close(dz, ref.tensors.at("dx"), "dlogits");
  std::vector<int32_t> bad = {3, 0, 99, 1, 1, 1, 1};
  EXPECT_THROW(cross_entropy(z.data(), bad.data(), T, V, nullptr), Error);
}

// The distillation term λ·mean KL(q ‖ p) of lifelong learning (docs/MECHANISMS.md §6): its value
// and its gradient w.r.t. the student's logits against finite differences and PyTorch's F.kl_div.
TEST(DistillKl, GradientsParityAndIgnoredPositions) {
  const int T = 7, V = 11;
  const float weight = 0.7f;
  Tensor z({T, V}), teacher({T, V}), dz({T, V});
  fill_normal(z.data(), z.numel(), 6, 1, 0.f, 2.f);
  fill_normal(teacher.data(), teacher.numel(), 6, 2, 0.f, 2.f);
  std::vector<int32_t> tg = {3, 0, kIgnoreIndex, 10, 5, 5, kIgnoreIndex};
  dz.zero();
  const double loss = distill_kl(z.data(), teacher.data(), tg.data(), T, V, weight, dz.data());
  EXPECT_GT(loss, 0.0);
  for (int v = 0; v < V; ++v) {
    EXPECT_EQ(dz[2 * V + v], 0.f);
    EXPECT_EQ(dz[6 * V + v], 0.f);
  }
  auto J = [&] { return distill_kl(z.data(), teacher.data(), tg.data(), T, V, weight, nullptr); };
  check_fd(z, dz, J, "distillation dlogits", 1e-3, 40);
  TensorFile in;
  in.metadata["module"] = "distill";
  in.metadata["config"] = "{\"weight\": 0.7}";
  in.tensors["x"] = z;
  in.tensors["teacher"] = teacher;
  Tensor targets({T});
  for (int t = 0; t < T; ++t) targets[t] = static_cast<float>(tg[t]);
  in.tensors["targets"] = targets;
  TensorFile ref = torch_reference("distill", in);
  EXPECT_NEAR(loss, ref.tensors.at("loss")[0], 1e-5);
  expect_close(dz, ref.tensors.at("dx"), "distillation dlogits");
  // A student equal to its teacher: no loss, no gradient; the gradient adds to what dlogits held.
  Tensor same({T, V});
  same.fill(0.25f);
  EXPECT_NEAR(distill_kl(teacher.data(), teacher.data(), tg.data(), T, V, weight, same.data()), 0.0, 1e-6);
  for (size_t i = 0; i < same.numel(); ++i) EXPECT_NEAR(same[i], 0.25f, 1e-6f);
}

TEST(Embedding, LooksUpAndAccumulates) {
  Embedding emb(10, 4, 1, 1, 1.f);
  std::vector<int32_t> tok = {3, 7, 3};
  Tensor y({3, 4}), dy({3, 4});
  emb.forward(tok.data(), 3, y.data());
  for (int j = 0; j < 4; ++j) {
    EXPECT_EQ(y[j], emb.w[3 * 4 + j]);
    EXPECT_EQ(y[4 + j], emb.w[7 * 4 + j]);
  }
  for (size_t i = 0; i < dy.numel(); ++i) dy[i] = static_cast<float>(i);
  emb.backward(tok.data(), 3, dy.data());
  for (int j = 0; j < 4; ++j) {
    EXPECT_EQ(emb.dw[3 * 4 + j], dy[j] + dy[8 + j]);  // token 3 appears twice
    EXPECT_EQ(emb.dw[7 * 4 + j], dy[4 + j]);
    EXPECT_EQ(emb.dw[0 * 4 + j], 0.f);
  }
  std::vector<int32_t> bad = {3, 10};
  EXPECT_THROW(emb.forward(bad.data(), 2, y.data()), Error);
}

}  // namespace
}  // namespace moe
