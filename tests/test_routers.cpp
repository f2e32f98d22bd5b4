// The routers of the scaling-law papers: BASE's balanced assignment (exact balance, optimal against
// brute force), S-BASE's Sinkhorn normalisation, Hash routing (deterministic, balanced over the
// vocabulary), expert choice (exactly C tokens per expert, its top C), and RL-R (sampling follows
// π; the REINFORCE surrogate's gradient against finite differences; the baseline's EMA).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "moe/moe_layer.h"
#include "moe/routers/routers.h"
#include "moe_cases.h"

namespace moe::test {
namespace {

// The best total score over every assignment of T rows to columns with column e taking cap[e] rows.
double brute_force_best(const std::vector<float>& s, int T, int E, std::vector<int> cap) {
  double best = -std::numeric_limits<double>::infinity();
  std::function<void(int, double)> go = [&](int t, double acc) {
    if (t == T) {
      best = std::max(best, acc);
      return;
    }
    for (int e = 0; e < E; ++e) {
      if (cap[static_cast<size_t>(e)] == 0) continue;
      --cap[static_cast<size_t>(e)];
      go(t + 1, acc + s[static_cast<size_t>(t) * E + e]);
      ++cap[static_cast<size_t>(e)];
    }
  };
  go(0, 0.0);
  return best;
}

TEST(BaseRouter, AuctionIsOptimalAgainstBruteForce) {
  struct Shape { int T, E; };
  int cases = 0;
  for (Shape sh : {Shape{6, 3}, Shape{8, 4}, Shape{7, 3}, Shape{9, 2}, Shape{10, 5}, Shape{8, 8}}) {
    for (uint64_t seed = 1; seed <= 6; ++seed) {
      std::vector<float> s(static_cast<size_t>(sh.T) * sh.E);
      fill_normal(s.data(), s.size(), seed, static_cast<uint64_t>(sh.T * 100 + sh.E), 0.f, 1.f);
      std::vector<int> cap(static_cast<size_t>(sh.E), sh.T / sh.E);
      for (int e = 0; e < sh.T % sh.E; ++e) ++cap[static_cast<size_t>(e)];
      const std::vector<int32_t> a = balanced_assignment(s.data(), sh.T, sh.E, cap, 1e-7);
      std::vector<int> got(static_cast<size_t>(sh.E), 0);
      double total = 0.0;
      for (int t = 0; t < sh.T; ++t) {
        ASSERT_GE(a[static_cast<size_t>(t)], 0);
        ++got[static_cast<size_t>(a[static_cast<size_t>(t)])];
        total += s[static_cast<size_t>(t) * sh.E + a[static_cast<size_t>(t)]];
      }
      EXPECT_EQ(got, cap) << "T=" << sh.T << " E=" << sh.E << " seed " << seed;
      EXPECT_NEAR(total, brute_force_best(s, sh.T, sh.E, cap), 1e-5) << "T=" << sh.T << " E=" << sh.E << " seed " << seed;
      ++cases;
    }
  }
  EXPECT_EQ(cases, 36);
}

TEST(BaseRouter, TrainingGivesEveryExpertExactlyTOverE) {
  MoeConfig c = small_config("base");
  c.num_experts_per_tok = 1;
  c.num_local_experts = 8;
  c.hidden_size = 16;
  MoeLayer layer(c);
  randomize(layer, 3);
  const int T = 256;
  Tensor x({T, c.hidden_size}), y({T, c.hidden_size});
  fill_normal(x.data(), x.numel(), 4, 4, 0.5f, 1.f);  // a shared offset: argmax alone is far from balanced
  layer.forward(x.data(), T, y.data(), {false, 0, 0});
  const std::vector<int32_t> eval_load = layer.plan().counts;
  layer.forward(x.data(), T, y.data(), {true, 0, 0});
  for (int e = 0; e < c.num_local_experts; ++e) EXPECT_EQ(layer.plan().counts[static_cast<size_t>(e)], T / c.num_local_experts) << "expert " << e;
  EXPECT_NE(eval_load, layer.plan().counts) << "the test input should be unbalanced under argmax";
  // Larger: 4096 tokens over 64 experts.
  c.num_local_experts = 64;
  MoeLayer big(c);
  randomize(big, 4);
  Tensor xb({4096, c.hidden_size}), yb({4096, c.hidden_size});
  fill_normal(xb.data(), xb.numel(), 5, 5, 0.f, 1.f);
  big.forward(xb.data(), 4096, yb.data(), {true, 0, 0});
  for (int e = 0; e < 64; ++e) EXPECT_EQ(big.plan().counts[static_cast<size_t>(e)], 64);
}

TEST(SBaseRouter, SinkhornColumnsAndRowsAreUniform) {
  for (float scale : {0.5f, 2.f, 5.f}) {
    const int T = 512, E = 8;
    std::vector<float> s(static_cast<size_t>(T) * E), out(s.size());
    fill_normal(s.data(), s.size(), 7, static_cast<uint64_t>(scale * 10), 0.f, scale);
    for (int t = 0; t < T; ++t) s[static_cast<size_t>(t) * E] += scale;  // expert 0 preferred by everyone
    const int it = sinkhorn(s.data(), T, E, out.data());
    EXPECT_LE(it, 50);
    std::vector<double> col(E, 0.0);
    double worst_row = 0.0;
    for (int t = 0; t < T; ++t) {
      double row = 0.0;
      for (int e = 0; e < E; ++e) {
        col[static_cast<size_t>(e)] += out[static_cast<size_t>(t) * E + e];
        row += out[static_cast<size_t>(t) * E + e];
      }
      worst_row = std::max(worst_row, std::fabs(row - 1.0));
    }
    // Row sums 1 and column sums T/E: scaled by E/T every column sums to 1.
    for (int e = 0; e < E; ++e) EXPECT_NEAR(col[static_cast<size_t>(e)] * E / T, 1.0, 1e-3) << "scale " << scale << " column " << e;
    if (it < 50) {
      EXPECT_LT(worst_row, 1e-2) << "scale " << scale << " converged in " << it << " iterations";
    }
  }
}

TEST(SBaseRouter, TrainingSelectionIsBalancedEvalIsTopK) {
  MoeConfig c = small_config("sbase");
  c.num_experts_per_tok = 1;
  c.num_local_experts = 8;
  MoeLayer layer(c);
  randomize(layer, 3);
  const int T = 1024;
  Tensor x({T, c.hidden_size}), y({T, c.hidden_size});
  fill_normal(x.data(), x.numel(), 4, 4, 0.5f, 1.f);
  layer.forward(x.data(), T, y.data(), {false, 0, 0});
  const auto eval_counts = layer.plan().counts;
  layer.forward(x.data(), T, y.data(), {true, 0, 0});
  const auto train_counts = layer.plan().counts;
  auto max_mean = [&](const std::vector<int32_t>& v) {
    return static_cast<double>(*std::max_element(v.begin(), v.end())) * c.num_local_experts / T;
  };
  EXPECT_GT(max_mean(eval_counts), 1.5);
  EXPECT_LT(max_mean(train_counts), 1.25) << "Sinkhorn selection should be close to balanced";
  // Eval selection is the top-1 of s.
  layer.forward(x.data(), T, y.data(), {false, 0, 0});
  const Tensor& s = layer.router->logits;
  for (int t = 0; t < T; ++t) {
    const float* st = s.data() + static_cast<size_t>(t) * c.num_local_experts;
    EXPECT_EQ(layer.routing().expert[static_cast<size_t>(t)], std::max_element(st, st + c.num_local_experts) - st);
  }
}

TEST(HashRouter, DeterministicAndBalancedOverTheVocabulary) {
  for (int V : {37, 4096}) {
    for (int k : {1, 2}) {
      MoeConfig c = small_config("hash");
      c.num_local_experts = 8;
      c.num_experts_per_tok = k;
      c.vocab_size = V;
      MoeLayer a(c), b(c);
      std::vector<int32_t> vocab(static_cast<size_t>(V));
      std::iota(vocab.begin(), vocab.end(), 0);
      Tensor x({V, c.hidden_size}), y({V, c.hidden_size});
      fill_normal(x.data(), x.numel(), 1, 1, 0.f, 1.f);
      a.forward(x.data(), V, y.data(), {true, 1, 0, vocab.data()});
      const std::vector<int32_t> first = a.routing().expert;
      b.forward(x.data(), V, y.data(), {false, 9, 0, vocab.data()});
      EXPECT_EQ(first, b.routing().expert) << "same config, other layer object, eval: same routing";
      // Every slot sends each expert floor(V/E) or ceil(V/E) ids, so the whole vocabulary is balanced.
      for (int i = 0; i < k; ++i) {
        std::vector<int> n(8, 0);
        for (int v = 0; v < V; ++v) ++n[static_cast<size_t>(first[static_cast<size_t>(v) * k + i])];
        for (int e = 0; e < 8; ++e) {
          EXPECT_GE(n[static_cast<size_t>(e)], V / 8) << "V=" << V << " slot " << i;
          EXPECT_LE(n[static_cast<size_t>(e)], (V + 7) / 8) << "V=" << V << " slot " << i;
        }
      }
      for (int v = 0; v < V && k == 2; ++v)
        EXPECT_NE(first[static_cast<size_t>(v) * 2], first[static_cast<size_t>(v) * 2 + 1]) << "a token's two experts differ";
      EXPECT_TRUE(a.params().size() == 3) << "hash routing has no router parameters";
      // Another layer hashes differently.
      c.layer_id = 5;
      MoeLayer other(c);
      other.forward(x.data(), V, y.data(), {true, 1, 0, vocab.data()});
      EXPECT_NE(first, other.routing().expert);
    }
  }
}

TEST(HashRouter, NeedsTokenIdsAndAVocabulary) {
  MoeConfig c = small_config("hash");
  EXPECT_THROW(c.validate(), Error);  // vocab_size = 0
  c.vocab_size = 10;
  c.router_aux_loss_coef = 0.01f;
  try {
    c.validate();
    FAIL() << "aux loss with hash routing should be rejected";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("aux_loss_coef"), std::string::npos) << e.what();
  }
  c.router_aux_loss_coef = 0.f;
  MoeLayer layer(c);
  Tensor x({4, c.hidden_size}), y({4, c.hidden_size});
  EXPECT_THROW(layer.forward(x.data(), 4, y.data(), {true, 0, 0}), Error);
}

TEST(ExpertChoiceRouter, EveryExpertFillsExactlyCSlotsWithItsTopTokens) {
  struct Case { int T, E, k; float cf; };
  for (Case cs : {Case{64, 4, 2, 0.f}, Case{100, 8, 1, 1.25f}, Case{50, 8, 2, 0.5f}, Case{7, 4, 1, 2.f}}) {
    MoeConfig c = small_config("expert_choice");
    c.num_local_experts = cs.E;
    c.num_experts_per_tok = cs.k;
    c.capacity_factor = cs.cf;
    MoeLayer layer(c);
    randomize(layer, 2);
    Tensor x({cs.T, c.hidden_size}), y({cs.T, c.hidden_size});
    fill_normal(x.data(), x.numel(), 6, 6, 0.f, 1.f);
    layer.forward(x.data(), cs.T, y.data(), {true, 0, 0});
    const double cf = cs.cf > 0.f ? cs.cf : 1.0;
    const int64_t C = std::min<int64_t>(cs.T, static_cast<int64_t>(std::ceil(cf * cs.T * cs.k / cs.E)));
    const Routing& r = layer.routing();
    ASSERT_EQ(r.k, cs.E);
    const Tensor& p = layer.router->prob;
    for (int e = 0; e < cs.E; ++e) {
      EXPECT_EQ(layer.plan().counts[static_cast<size_t>(e)], C) << "expert " << e;
      // Its tokens are its top C by p: every chosen p >= every unchosen p.
      float lo = 2.f, hi = -1.f;
      for (int t = 0; t < cs.T; ++t) {
        const float v = p[static_cast<size_t>(t) * cs.E + e];
        if (r.expert[static_cast<size_t>(t) * cs.E + e] == e) lo = std::min(lo, v);
        else hi = std::max(hi, v);
      }
      EXPECT_GE(lo, hi) << "expert " << e;
    }
    EXPECT_EQ(layer.plan().dropped, 0);
  }
}

TEST(ExpertChoiceRouter, DecodingFallsBackToTokenChoice) {
  MoeConfig c = small_config("expert_choice");
  MoeLayer layer(c);
  randomize(layer, 2);
  Tensor x({1, c.hidden_size}), y({1, c.hidden_size});
  fill_normal(x.data(), x.numel(), 6, 6, 0.f, 1.f);
  layer.forward(x.data(), 1, y.data(), {false, 0, 1, nullptr, true});
  EXPECT_EQ(layer.routing().k, c.num_experts_per_tok);
  EXPECT_EQ(layer.plan().rows(), c.num_experts_per_tok);
}

TEST(ReinforceRouter, SamplesFollowThePolicy) {
  MoeConfig c = small_config("reinforce");
  c.num_experts_per_tok = 1;
  MoeLayer layer(c);
  randomize(layer, 2);
  const int T = 20000;
  Tensor x({T, c.hidden_size}), y({T, c.hidden_size});
  std::vector<float> row(static_cast<size_t>(c.hidden_size));
  fill_normal(row.data(), row.size(), 6, 6, 0.f, 1.f);
  for (int t = 0; t < T; ++t) std::copy(row.begin(), row.end(), x.data() + static_cast<size_t>(t) * c.hidden_size);
  layer.forward(x.data(), T, y.data(), {true, 0, 0});
  std::vector<double> freq(static_cast<size_t>(c.num_local_experts), 0.0);
  for (int32_t e : layer.routing().expert) freq[static_cast<size_t>(e)] += 1.0 / T;
  for (int e = 0; e < c.num_local_experts; ++e) EXPECT_NEAR(freq[static_cast<size_t>(e)], layer.router->prob[static_cast<size_t>(e)], 0.01);
  // Without replacement at k = 2: two distinct experts per token.
  c.num_experts_per_tok = 2;
  MoeLayer two(c);
  two.forward(x.data(), 100, y.data(), {true, 0, 0});
  for (int t = 0; t < 100; ++t) EXPECT_NE(two.routing().expert[static_cast<size_t>(t) * 2], two.routing().expert[static_cast<size_t>(t) * 2 + 1]);
}

TEST(ReinforceRouter, SurrogateGradientMatchesFiniteDifferences) {
  MoeConfig c = small_config("reinforce");
  c.reinforce_coef = 1.f;
  MoeLayer layer(c);
  randomize(layer, 5);
  const int T = 24;
  Tensor x({T, c.hidden_size}), y({T, c.hidden_size}), dy({T, c.hidden_size}), dx({T, c.hidden_size});
  fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
  std::vector<float> reward(static_cast<size_t>(T));
  fill_normal(reward.data(), reward.size(), 9, 3, -4.f, 1.f);
  auto rl = [&](std::vector<int32_t>* sel) {
    layer.forward(x.data(), T, y.data(), {true, 7, 0});
    layer.set_reward(reward.data());
    if (sel) *sel = layer.routing().expert;
    return static_cast<double>(layer.losses().router.rl);
  };
  layer.zero_grad();
  std::vector<int32_t> sel0;
  const double base = rl(&sel0);
  EXPECT_NE(base, 0.0);
  layer.backward(dy.data(), dx.data());  // dy = 0: only the surrogate moves the router
  Tensor& w = layer.router->w;
  const Tensor dw = layer.router->dw;
  double norm = 0.0;
  int checked = 0;
  const float eps = 1e-3f;
  for (size_t i = 0; i < w.numel(); ++i) {
    const float orig = w[i];
    std::vector<int32_t> sp, sm;
    w[i] = orig + eps;
    const double plus = rl(&sp);
    w[i] = orig - eps;
    const double minus = rl(&sm);
    w[i] = orig;
    if (sp != sel0 || sm != sel0) continue;  // a sample flipped: no derivative to compare
    const double fd = (plus - minus) / (2.0 * eps);
    EXPECT_NEAR(dw[i], fd, 1e-3 + 1e-2 * std::fabs(fd)) << "dW_r[" << i << "]";
    norm += std::fabs(fd);
    ++checked;
  }
  EXPECT_GT(checked, static_cast<int>(w.numel()) * 3 / 4);
  EXPECT_GT(norm, 1e-3);
  // dx through the router input as well.
  for (size_t i = 0; i < 24; ++i) {
    const float orig = x[i];
    x[i] = orig + eps;
    const double plus = rl(nullptr);
    x[i] = orig - eps;
    const double minus = rl(nullptr);
    x[i] = orig;
    EXPECT_NEAR(dx[i], (plus - minus) / (2.0 * eps), 1e-3 + 1e-2 * std::fabs(dx[i])) << "dx[" << i << "]";
  }
}

TEST(ReinforceRouter, BaselineIsAnEmaOfTheMeanReward) {
  MoeConfig c = small_config("reinforce");
  MoeLayer layer(c);
  auto* rl = dynamic_cast<ReinforceRouter*>(layer.router.get());
  ASSERT_NE(rl, nullptr);
  const int T = 4;
  Tensor x({T, c.hidden_size}), y({T, c.hidden_size});
  std::vector<float> r1 = {-2.f, -4.f, std::nanf(""), -3.f}, r2 = {-1.f, -1.f, -1.f, -1.f};
  layer.forward(x.data(), T, y.data(), {true, 0, 0});
  layer.set_reward(r1.data());
  layer.after_step();
  EXPECT_FLOAT_EQ(rl->baseline[0], -3.f);  // first step: the mean reward itself (NaN skipped)
  layer.forward(x.data(), T, y.data(), {true, 1, 0});
  layer.set_reward(r2.data());
  layer.after_step();
  EXPECT_FLOAT_EQ(rl->baseline[0], 0.99f * -3.f + 0.01f * -1.f);
  ASSERT_EQ(rl->buffers().size(), 1u);
  EXPECT_EQ(rl->buffers()[0].first, "baseline");
}

}  // namespace
}  // namespace moe::test
