// PEER's product-key retrieval (SPEC §5): for random queries, the product-key top-k equals the
// brute-force top-k over all N = n_keys² scores, ties broken the same way (lower expert index).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "core/gemm.h"
#include "core/rng.h"
#include "moe/peer.h"

namespace moe::test {
namespace {

void brute_force(const std::vector<float>& s1, const std::vector<float>& s2, int n, int k, std::vector<int32_t>& idx) {
  std::vector<int32_t> all(static_cast<size_t>(n) * n);
  std::iota(all.begin(), all.end(), 0);
  auto score = [&](int32_t e) { return s1[static_cast<size_t>(e / n)] + s2[static_cast<size_t>(e % n)]; };
  std::stable_sort(all.begin(), all.end(), [&](int32_t x, int32_t y) { return score(x) > score(y); });
  idx.assign(all.begin(), all.begin() + k);
}

TEST(ProductKeys, TopKEqualsBruteForce) {
  struct Case { int n, k; };
  int checked = 0;
  for (Case c : {Case{8, 1}, Case{16, 4}, Case{64, 16}, Case{128, 8}, Case{32, 32}, Case{256, 16}}) {
    for (uint64_t q = 0; q < 20; ++q) {
      std::vector<float> s1(static_cast<size_t>(c.n)), s2(s1.size());
      fill_normal(s1.data(), s1.size(), 3, q * 2, 0.f, 1.f);
      fill_normal(s2.data(), s2.size(), 3, q * 2 + 1, 0.f, 1.f);
      std::vector<int32_t> want, got(static_cast<size_t>(c.k));
      std::vector<float> score(static_cast<size_t>(c.k));
      brute_force(s1, s2, c.n, c.k, want);
      product_key_topk(s1.data(), s2.data(), c.n, c.k, got.data(), score.data());
      ASSERT_EQ(got, want) << "n_keys " << c.n << " k " << c.k << " query " << q;
      for (int i = 0; i < c.k; ++i)
        EXPECT_EQ(score[static_cast<size_t>(i)], s1[static_cast<size_t>(got[static_cast<size_t>(i)] / c.n)] +
                                                      s2[static_cast<size_t>(got[static_cast<size_t>(i)] % c.n)]);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 120);
}

TEST(ProductKeys, TiesGoToTheLowerExpertIndex) {
  // Small integer scores: exact sums and many ties.
  for (uint64_t q = 0; q < 50; ++q) {
    const int n = 12, k = 7;
    std::vector<float> s1(n), s2(n);
    for (int i = 0; i < n; ++i) {
      s1[static_cast<size_t>(i)] = static_cast<float>(static_cast<int>(rng_uniform(5, q, static_cast<uint64_t>(i)) * 4.f));
      s2[static_cast<size_t>(i)] = static_cast<float>(static_cast<int>(rng_uniform(6, q, static_cast<uint64_t>(i)) * 4.f));
    }
    std::vector<int32_t> want, got(k);
    std::vector<float> score(k);
    brute_force(s1, s2, n, k, want);
    product_key_topk(s1.data(), s2.data(), n, k, got.data(), score.data());
    ASSERT_EQ(got, want) << "query " << q;
  }
}

}  // namespace
}  // namespace moe::test

namespace moe::test {
namespace {

struct PeerCase {
  std::string name;
  PeerConfig cfg;
  bool training = true;
};

std::vector<PeerCase> peer_cases() {
  PeerConfig c;
  c.d_model = 6;
  c.n_keys = 5;
  c.heads = 2;
  c.top_k = 3;
  c.d_key = 4;
  c.init_std = 0.5f;
  c.seed = 3;
  std::vector<PeerCase> v = {{"bn_softmax_gelu", c, true}, {"bn_eval", c, false}};
  c.query_bn = false;
  c.score = "sigmoid";
  v.push_back({"nobn_sigmoid", c, true});
  c.score = "softmax";
  c.activation = "relu";
  v.push_back({"nobn_relu", c, true});
  return v;
}

inline void PrintTo(const PeerCase& c, std::ostream* os) { *os << c.name; }

class PeerGradient : public ::testing::TestWithParam<PeerCase> {};

// Finite differences of J = Σ y·dy for x, W_q, the BN affine, and the touched rows of K1, K2, u, v.
TEST_P(PeerGradient, MatchesFiniteDifferences) {
  const PeerCase& pc = GetParam();
  PeerLayer layer(pc.cfg);
  const int T = 10, d = pc.cfg.d_model;
  fill_normal(layer.bn_gamma.data(), layer.bn_gamma.numel(), 4, 1, 1.f, 0.3f);
  fill_normal(layer.bn_beta.data(), layer.bn_beta.numel(), 4, 2, 0.f, 0.3f);
  fill_normal(layer.running_mean.data(), layer.running_mean.numel(), 4, 3, 0.f, 0.3f);
  fill_uniform(layer.running_var.data(), layer.running_var.numel(), 4, 4, 0.5f, 2.f);
  Tensor x({T, d}), y({T, d}), dy({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 9, 2, 0.f, 1.f);
  const Tensor rm = layer.running_mean, rv = layer.running_var;
  auto J = [&](std::vector<int32_t>* sel) {
    layer.running_mean = rm;  // a training forward moves the running statistics: keep them fixed
    layer.running_var = rv;
    layer.forward(x.data(), T, y.data(), pc.training);
    if (sel) {  // the retrieval, and for ReLU which side of its kink each pre-activation is on
      *sel = layer.experts();
      for (float z : layer.preactivations()) sel->push_back(z > 0.f);
    }
    double j = 0.0;
    for (size_t i = 0; i < y.numel(); ++i) j += static_cast<double>(y[i]) * dy[i];
    return j;
  };
  layer.zero_grad();
  std::vector<int32_t> sel0;
  J(&sel0);
  layer.backward(dy.data(), dx.data());
  // Sparse gradients as dense tables for the check (the test tables are tiny).
  auto densify = [](const SparseRows& s, const Tensor& like) {
    Tensor g(like.shape());
    g.zero();
    const int64_t w = like.dim(1);
    for (size_t r = 0; r < s.rows.size(); ++r)
      for (int64_t j = 0; j < w; ++j) g[static_cast<size_t>(s.rows[r] * w + j)] = s.grad[r * static_cast<size_t>(w) + static_cast<size_t>(j)];
    return g;
  };
  std::vector<std::pair<std::string, std::pair<Tensor*, Tensor>>> targets = {
      {"x", {&x, dx}}, {"wq", {&layer.wq, layer.dwq}},
      {"k1", {&layer.k1, densify(layer.dk1, layer.k1)}}, {"k2", {&layer.k2, densify(layer.dk2, layer.k2)}},
      {"u", {&layer.u, densify(layer.du, layer.u)}}, {"v", {&layer.v, densify(layer.dv, layer.v)}}};
  if (pc.cfg.query_bn) {
    targets.push_back({"bn_gamma", {&layer.bn_gamma, layer.dbn_gamma}});
    targets.push_back({"bn_beta", {&layer.bn_beta, layer.dbn_beta}});
  }
  const float eps = 1e-2f;
  int checked = 0, skipped = 0;
  for (auto& [name, tg] : targets) {
    Tensor* val = tg.first;
    const Tensor& grad = tg.second;
    for (size_t i = 0; i < val->numel(); ++i) {
      const float orig = (*val)[i];
      std::vector<int32_t> sp, sm;
      (*val)[i] = orig + eps;
      const double plus = J(&sp);
      (*val)[i] = orig - eps;
      const double minus = J(&sm);
      (*val)[i] = orig;
      if (sp != sel0 || sm != sel0) {  // the retrieval or a ReLU side changed: no derivative to compare
        ++skipped;
        continue;
      }
      const double fd = (plus - minus) / (2.0 * eps);
      EXPECT_NEAR(grad[i], fd, 2e-3 + 2e-2 * std::fabs(fd)) << pc.name << ": d/d " << name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 300) << "skipped " << skipped;
  // Only the rows retrieved carry gradient: the sparse gradients list exactly those rows.
  const size_t pairs = static_cast<size_t>(T) * pc.cfg.heads * pc.cfg.top_k;
  std::vector<int32_t> used(sel0.begin(), sel0.begin() + static_cast<long>(pairs));
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  EXPECT_EQ(layer.du.rows, used);
  EXPECT_EQ(layer.dv.rows, used);
}

INSTANTIATE_TEST_SUITE_P(Peer, PeerGradient, ::testing::ValuesIn(peer_cases()),
                         [](const ::testing::TestParamInfo<PeerCase>& pi) { return pi.param.name; });

TEST(PeerLayer, BatchNormUsesBatchStatisticsInTrainingAndRunningOnesAtEval) {
  PeerConfig c;
  c.d_model = 8;
  c.n_keys = 6;
  c.heads = 2;
  c.top_k = 2;
  c.d_key = 4;
  c.bn_momentum = 0.5f;
  PeerLayer layer(c);
  const int T = 64;
  Tensor x({T, c.d_model}), y({T, c.d_model});
  fill_normal(x.data(), x.numel(), 1, 1, 2.f, 3.f);
  layer.forward(x.data(), T, y.data(), true);
  // Training: the normalised queries have batch mean 0 and variance 1 (gamma 1, beta 0).
  // Running statistics moved halfway (momentum 0.5) from (0, 1) toward the batch's.
  Tensor q({T, c.heads * c.d_key});
  sgemm(false, true, T, c.heads * c.d_key, c.d_model, 1.f, x.data(), c.d_model, layer.wq.data(), c.d_model, 0.f, q.data(), c.heads * c.d_key);
  for (int j = 0; j < c.heads * c.d_key; ++j) {
    double m = 0.0, s = 0.0;
    for (int t = 0; t < T; ++t) m += q[static_cast<size_t>(t * c.heads * c.d_key + j)];
    m /= T;
    for (int t = 0; t < T; ++t) s += std::pow(q[static_cast<size_t>(t * c.heads * c.d_key + j)] - m, 2);
    EXPECT_NEAR(layer.running_mean[static_cast<size_t>(j)], 0.5 * m, 1e-4 * (1 + std::fabs(m)));
    EXPECT_NEAR(layer.running_var[static_cast<size_t>(j)], 0.5 + 0.5 * s / (T - 1), 1e-3 * (1 + s / T));
  }
  // Eval uses the running statistics: the same input routes differently from training, and the
  // running statistics do not move.
  const Tensor rm = layer.running_mean;
  const std::vector<int32_t> train_sel = layer.experts();
  layer.forward(x.data(), T, y.data(), false);
  EXPECT_EQ(std::memcmp(rm.data(), layer.running_mean.data(), rm.numel() * 4), 0);
  EXPECT_NE(train_sel, layer.experts());
  // After many training forwards on the same batch the running statistics converge to the batch's,
  // and eval routing equals training routing.
  for (int i = 0; i < 40; ++i) layer.forward(x.data(), T, y.data(), true);
  layer.forward(x.data(), T, y.data(), false);
  const std::vector<int32_t> eval_sel = layer.experts();
  layer.forward(x.data(), T, y.data(), true);
  size_t same = 0;
  for (size_t i = 0; i < eval_sel.size(); ++i) same += eval_sel[i] == layer.experts()[i];
  EXPECT_GT(same, eval_sel.size() * 9 / 10);  // unbiased vs biased variance differ by T/(T−1)
}

}  // namespace
}  // namespace moe::test
