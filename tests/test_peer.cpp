// PEER (docs/MECHANISMS.md §5): product-key retrieval equals brute force over all N = n_keys² scores (ties to the
// lower expert index); the layer's gradients match finite differences and the PyTorch reference
// tests/torch_ref/peer_ref.py; BatchNorm's train/eval behaviour; sparse gradients accumulate by row
// union; the lazy Adam rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "core/gemm.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "peer/peer_layer.h"
#include "peer/peer_stats.h"
#include "peer/product_keys.h"
#include "train/adamw.h"


#ifndef MOE_SOURCE_DIR
#error "MOE_SOURCE_DIR must point at the source tree"
#endif

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

// A tiny PEER layer config.
PeerConfig small_peer(int d_model, int n_keys, int heads, int top_k, int d_key) {
  PeerConfig c;
  c.hidden_size = d_model;
  c.n_keys = n_keys;
  c.heads = heads;
  c.top_k = top_k;
  c.d_key = d_key;
  return c;
}

struct PeerCase {
  std::string name;
  PeerConfig cfg;
  bool training = true;
};

std::vector<PeerCase> peer_cases() {
  PeerConfig c = small_peer(6, 5, 2, 3, 4);
  c.init_std = 0.5f;
  c.seed = 3;
  std::vector<PeerCase> v = {{"bn_softmax_gelu", c, true}, {"bn_eval", c, false}};
  c.query_bn = false;
  c.score = PeerScore::sigmoid;
  v.push_back({"nobn_sigmoid", c, true});
  c.score = PeerScore::softmax;
  c.activation = PeerActivation::relu;
  v.push_back({"nobn_relu", c, true});
  return v;
}

inline void PrintTo(const PeerCase& c, std::ostream* os) { *os << c.name; }

class PeerGradient : public ::testing::TestWithParam<PeerCase> {};

// BatchNorm away from its identity start: affine and running statistics drawn at random.
void randomize_bn(PeerLayer& layer) {
  fill_normal(layer.bn_gamma.data(), layer.bn_gamma.numel(), 4, 1, 1.f, 0.3f);
  fill_normal(layer.bn_beta.data(), layer.bn_beta.numel(), 4, 2, 0.f, 0.3f);
  fill_normal(layer.running_mean.data(), layer.running_mean.numel(), 4, 3, 0.f, 0.3f);
  fill_uniform(layer.running_var.data(), layer.running_var.numel(), 4, 4, 0.5f, 2.f);
}

// A sparse gradient as a dense table shaped like the parameter (the test tables are tiny).
Tensor densify(const SparseRows& s, const Tensor& like) {
  Tensor g(like.shape());
  const int64_t w = like.dim(1);
  for (size_t r = 0; r < s.rows.size(); ++r)
    for (int64_t j = 0; j < w; ++j)
      g[static_cast<size_t>(s.rows[r] * w + j)] = s.grad[r * static_cast<size_t>(w) + static_cast<size_t>(j)];
  return g;
}

// Finite differences of J = Σ y·dy for x, W_q, the BN affine, and the touched rows of K1, K2, u, v.
TEST_P(PeerGradient, MatchesFiniteDifferences) {
  const PeerCase& pc = GetParam();
  PeerLayer layer(pc.cfg);
  const int T = 10, d = pc.cfg.hidden_size;
  randomize_bn(layer);
  Tensor x({T, d}), y({T, d}), dy({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 9, 2, 0.f, 1.f);
  const Tensor rm = layer.running_mean, rv = layer.running_var;
  auto J = [&](std::vector<int32_t>* sel) {
    layer.running_mean = rm;  // a training forward moves the running statistics: keep them fixed
    layer.running_var = rv;
    layer.forward(x.data(), T, y.data(), {.training = pc.training});
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
  PeerConfig c = small_peer(8, 6, 2, 2, 4);
  c.bn_momentum = 0.5f;
  PeerLayer layer(c);
  const int T = 64;
  Tensor x({T, c.hidden_size}), y({T, c.hidden_size});
  fill_normal(x.data(), x.numel(), 1, 1, 2.f, 3.f);
  layer.forward(x.data(), T, y.data(), {.training = true});
  // Training: the normalised queries have batch mean 0 and variance 1 (gamma 1, beta 0).
  // Running statistics moved halfway (momentum 0.5) from (0, 1) toward the batch's.
  Tensor q({T, c.heads * c.d_key});
  sgemm(false, true, T, c.heads * c.d_key, c.hidden_size, 1.f, x.data(), c.hidden_size, layer.wq.data(), c.hidden_size, 0.f, q.data(), c.heads * c.d_key);
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
  layer.forward(x.data(), T, y.data(), {.training = false});
  EXPECT_EQ(std::memcmp(rm.data(), layer.running_mean.data(), rm.numel() * 4), 0);
  EXPECT_NE(train_sel, layer.experts());
  // After many training forwards on the same batch the running statistics converge to the batch's,
  // and eval routing equals training routing.
  for (int i = 0; i < 40; ++i) layer.forward(x.data(), T, y.data(), {.training = true});
  layer.forward(x.data(), T, y.data(), {.training = false});
  const std::vector<int32_t> eval_sel = layer.experts();
  layer.forward(x.data(), T, y.data(), {.training = true});
  size_t same = 0;
  for (size_t i = 0; i < eval_sel.size(); ++i) same += eval_sel[i] == layer.experts()[i];
  EXPECT_GT(same, eval_sel.size() * 9 / 10);  // unbiased vs biased variance differ by T/(T−1)
}

// Forward output, input gradient, every parameter gradient (the tables' densified), the retrieval
// and the running statistics against the float64 autograd reference, for every case.
TEST_P(PeerGradient, MatchesPyTorch) {
  const PeerCase& pc = GetParam();
  PeerConfig cfg = pc.cfg;
  cfg.hidden_size = 8;
  cfg.n_keys = 6;
  PeerLayer layer(cfg);
  const int T = 16, d = cfg.hidden_size;
  randomize_bn(layer);
  Tensor x({T, d}), y({T, d}), dy({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 9, 2, 0.f, 1.f);
  TensorFile in;
  in.tensors["x"] = x;
  in.tensors["dy"] = dy;
  for (Param& p : layer.params()) in.tensors[p.name] = *p.value;
  for (SparseParam& p : layer.sparse_params()) in.tensors[p.name] = *p.value;
  in.tensors["running_mean"] = layer.running_mean;
  in.tensors["running_var"] = layer.running_var;
  in.metadata = {{"n_keys", std::to_string(cfg.n_keys)}, {"heads", std::to_string(cfg.heads)},
                 {"top_k", std::to_string(cfg.top_k)}, {"d_key", std::to_string(cfg.d_key)},
                 {"query_bn", cfg.query_bn ? "1" : "0"}, {"score", name_of(cfg.score)}, {"activation", name_of(cfg.activation)},
                 {"bn_eps", std::to_string(cfg.bn_eps)}, {"bn_momentum", std::to_string(cfg.bn_momentum)},
                 {"training", pc.training ? "1" : "0"}};
  layer.zero_grad();
  layer.forward(x.data(), T, y.data(), {.training = pc.training});
  layer.backward(dy.data(), dx.data());
  const std::string base = ::testing::TempDir() + "/peer_" + pc.name;  // ctest runs cases in parallel
  save_safetensors(base + ".safetensors", in);
  const std::string cmd = std::string(MOE_TORCH_PYTHON) + " " + MOE_SOURCE_DIR + "/tests/torch_ref/peer_ref.py " + base +
                          ".safetensors " + base + ".out.safetensors";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  TensorFile ref = load_safetensors(base + ".out.safetensors");
  const Tensor& experts = ref.tensors.at("experts");
  ASSERT_EQ(experts.numel(), layer.experts().size());
  for (size_t i = 0; i < experts.numel(); ++i) ASSERT_EQ(static_cast<int32_t>(experts[i]), layer.experts()[i]) << "pair " << i;
  auto close = [](const Tensor& got, const Tensor& want, const std::string& what) {
    ASSERT_EQ(got.numel(), want.numel()) << what;
    double scale = 0.0;
    for (size_t i = 0; i < want.numel(); ++i) scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
    for (size_t i = 0; i < want.numel(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-4 * std::fabs(want[i]) + 1e-5 * scale + 1e-7) << what << "[" << i << "]";
  };
  close(y, ref.tensors.at("y"), "y");
  close(dx, ref.tensors.at("dx"), "dx");
  for (Param& p : layer.params()) close(*p.grad, ref.tensors.at("grad." + p.name), p.name);
  for (SparseParam& p : layer.sparse_params()) close(densify(*p.grad, *p.value), ref.tensors.at("grad." + p.name), p.name);
  if (cfg.query_bn) {
    close(layer.running_mean, ref.tensors.at("running_mean"), "running_mean");
    close(layer.running_var, ref.tensors.at("running_var"), "running_var");
  }
}

// Two backwards without zero_grad (gradient accumulation) give the sum of the two, by row union.
TEST(PeerLayer, SparseGradientsAccumulateByRowUnion) {
  PeerConfig c = small_peer(8, 16, 2, 3, 4);
  c.init_std = 0.5f;
  PeerLayer layer(c);
  const int T = 6;
  Tensor xa({T, 8}), xb({T, 8}), dy({T, 8}), y({T, 8}), dx({T, 8});
  fill_normal(xa.data(), xa.numel(), 1, 1, 0.f, 1.f);
  fill_normal(xb.data(), xb.numel(), 1, 2, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 1, 3, 0.f, 1.f);
  auto grads = [&](const Tensor& x) {
    layer.zero_grad();
    layer.forward(x.data(), T, y.data(), {.training = false});
    layer.backward(dy.data(), dx.data());
    return std::vector<Tensor>{densify(layer.du, layer.u), densify(layer.dv, layer.v), densify(layer.dk1, layer.k1),
                               densify(layer.dk2, layer.k2)};
  };
  const std::vector<Tensor> ga = grads(xa), gb = grads(xb);
  layer.zero_grad();
  layer.forward(xa.data(), T, y.data(), {.training = false});
  layer.backward(dy.data(), dx.data());
  layer.forward(xb.data(), T, y.data(), {.training = false});
  layer.backward(dy.data(), dx.data());
  const std::vector<SparseRows*> acc = {&layer.du, &layer.dv, &layer.dk1, &layer.dk2};
  const std::vector<Tensor*> tabs = {&layer.u, &layer.v, &layer.k1, &layer.k2};
  for (size_t i = 0; i < acc.size(); ++i) {
    EXPECT_TRUE(std::is_sorted(acc[i]->rows.begin(), acc[i]->rows.end()));
    EXPECT_EQ(std::adjacent_find(acc[i]->rows.begin(), acc[i]->rows.end()), acc[i]->rows.end());
    const Tensor sum = densify(*acc[i], *tabs[i]);
    for (size_t j = 0; j < sum.numel(); ++j) ASSERT_FLOAT_EQ(sum[j], ga[i][j] + gb[i][j]) << "table " << i << " [" << j << "]";
  }
}

// Lazy Adam: the rows in the gradient follow Adam's formula with the global step's bias correction;
// the other rows and their moments stay as they were; tables get no weight decay.
TEST(SparseAdam, UpdatesOnlyTheRowsInTheGradient) {
  Tensor w({5, 3}), dense({2, 2}), dgrad({2, 2});
  fill_normal(w.data(), w.numel(), 2, 1, 0.f, 1.f);
  fill_normal(dense.data(), dense.numel(), 2, 2, 0.f, 1.f);
  SparseRows g;
  AdamWConfig oc;
  oc.weight_decay = 0.5f;
  AdamW opt({{"dense", &dense, &dgrad}}, oc, {{"table", &w, &g}});
  const Tensor w0 = w;
  std::vector<double> m(15, 0.0), v(15, 0.0);
  const std::vector<std::vector<int32_t>> steps = {{1, 3}, {3}, {0, 4}};
  for (size_t s = 0; s < steps.size(); ++s) {
    g.rows = steps[s];
    g.grad.resize({static_cast<int64_t>(g.rows.size()), 3});
    fill_normal(g.grad.data(), g.grad.numel(), 3, s, 0.f, 1.f);
    const Tensor before = w;
    opt.step(0.1f);
    const double t = static_cast<double>(s + 1);
    const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.95, t);
    for (int r = 0; r < 5; ++r) {
      const auto it = std::find(g.rows.begin(), g.rows.end(), r);
      for (int j = 0; j < 3; ++j) {
        const size_t i = static_cast<size_t>(r * 3 + j);
        if (it == g.rows.end()) {
          EXPECT_EQ(w[i], before[i]) << "untouched row " << r << " moved at step " << s;
          continue;
        }
        const double gi = g.grad[static_cast<size_t>(it - g.rows.begin()) * 3 + static_cast<size_t>(j)];
        m[i] = 0.9 * m[i] + 0.1 * gi;
        v[i] = 0.95 * v[i] + 0.05 * gi * gi;
        const double want = before[i] - 0.1 / bc1 * m[i] / (std::sqrt(v[i] / bc2) + 1e-8);
        EXPECT_NEAR(w[i], want, 1e-5) << "row " << r << " step " << s;
      }
    }
  }
  EXPECT_EQ(w[6], w0[6]);  // row 2 never chosen: unchanged, also by weight decay
  auto state = opt.state();
  ASSERT_EQ(state.size(), 4u);
  EXPECT_EQ(state[2].first, "table.exp_avg");
}

// Table 2's metrics: usage is the share of experts retrieved; unevenness = log N + Σ z log z of the
// normalised accumulated gates, 0 for uniform use and log N for a single expert.
TEST(PeerStats, UsageAndUnevenness) {
  PeerLayer layer(small_peer(8, 4, 2, 2, 4));
  PeerStats st(layer);
  st.score = {1.0, 1.0, 0.0, 2.0};
  EXPECT_DOUBLE_EQ(st.usage(), 0.75);
  EXPECT_NEAR(st.unevenness(), std::log(4.0) + 0.5 * std::log(0.25) + 0.5 * std::log(0.5), 1e-12);
  st.score = {3.0, 3.0, 3.0, 3.0};
  EXPECT_NEAR(st.unevenness(), 0.0, 1e-12);
  st.score = {0.0, 5.0, 0.0, 0.0};
  EXPECT_NEAR(st.unevenness(), std::log(4.0), 1e-12);
  // From a layer: every retrieval's gate lands on its expert.
  Tensor x({5, 8}), y({5, 8});
  fill_normal(x.data(), x.numel(), 1, 1, 0.f, 1.f);
  layer.forward(x.data(), 5, y.data(), {.training = false});
  PeerStats from(layer);
  from.add();
  EXPECT_EQ(from.pairs, 20);
  double total = 0.0;
  for (double v : from.score) total += v;
  EXPECT_NEAR(total, 10.0, 1e-5);  // softmax gates sum to 1 per (token, head)
}

}  // namespace
}  // namespace moe::test
