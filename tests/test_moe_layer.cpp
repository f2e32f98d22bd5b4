// Layer-level behaviour: the sigmoid_bias bias update, bit-identical reruns, dropped pairs contributing
// nothing, the eval path without noise, and the parameter accounting of shared experts.
#include <gtest/gtest.h>

#include <cstring>

#include "core/parallel.h"
#include "moe_cases.h"

namespace moe::test {
namespace {

TEST(SigmoidBias, UpdateMovesBiasTowardsBalance) {
  MoeConfig c = small_config("sigmoid_bias");
  c.num_local_experts = 8;
  c.bias_update_speed = 1e-3f;
  MoeLayer layer(c);
  randomize(layer, 3);
  Tensor* b = layer.router->selection_bias();
  ASSERT_NE(b, nullptr);
  b->zero();
  const int T = 32, d = c.hidden_size;
  Tensor x({T, d}), y({T, d});
  // Two training forwards: the update uses the loads routed since the last update, summed.
  std::vector<int64_t> load(8, 0);
  for (uint64_t step = 0; step < 2; ++step) {
    fill_normal(x.data(), x.numel(), 4, step, 0.f, 1.f);
    layer.forward(x.data(), T, y.data(), {true, step, 0});
    for (int e = 0; e < 8; ++e) load[e] += layer.plan().routed[e];
  }
  // An eval forward does not count.
  layer.forward(x.data(), T, y.data(), {false, 9, 0});
  layer.after_step();
  double mean = 0;
  for (int64_t v : load) mean += static_cast<double>(v) / 8.0;
  int moved = 0;
  for (int e = 0; e < 8; ++e) {
    const double le = static_cast<double>(load[e]);
    const float want = le < mean ? 1e-3f : (le > mean ? -1e-3f : 0.f);
    EXPECT_FLOAT_EQ((*b)[e], want) << "expert " << e << " load " << load[e] << " mean " << mean;
    moved += want != 0.f;
  }
  EXPECT_GT(moved, 0);
  // The counts restart after an update: with no forward in between the bias stays.
  Tensor before = *b;
  layer.after_step();
  for (int e = 0; e < 8; ++e) EXPECT_FLOAT_EQ((*b)[e], before[e]);
}

TEST(SigmoidBias, BiasSteersSelection) {
  MoeConfig c = small_config("sigmoid_bias");
  MoeLayer layer(c);
  randomize(layer, 3);
  Tensor* b = layer.router->selection_bias();
  b->zero();
  (*b)[2] = 10.f;  // a large bias forces expert 2 into every token's top-k
  const int T = 16;
  Tensor x({T, c.hidden_size}), y({T, c.hidden_size});
  fill_normal(x.data(), x.numel(), 4, 1, 0.f, 1.f);
  layer.forward(x.data(), T, y.data(), {true, 0, 0});
  EXPECT_EQ(layer.plan().routed[2], T);
  // ...but the gates use the unbiased affinities: they still sum to routed_scaling.
  for (int t = 0; t < T; ++t) EXPECT_NEAR(layer.routing().gate[t * 2] + layer.routing().gate[t * 2 + 1], 1.f, 1e-6);
}

TEST(MoeLayer, SameSeedSameThreadsIsBitIdentical) {
  for (const LayerCase& c : layer_cases()) {
    Tensor outs[2][2];
    for (int run = 0; run < 2; ++run) {
      MoeLayer layer(c.cfg);
      randomize(layer, 5);
      Tensor x({c.T, c.cfg.hidden_size}), y({c.T, c.cfg.hidden_size}), dy({c.T, c.cfg.hidden_size}), dx({c.T, c.cfg.hidden_size});
      fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
      fill_normal(dy.data(), dy.numel(), 9, 2, 0.f, 1.f);
      case_forward(layer, c, x.data(), y.data());
      layer.backward(dy.data(), dx.data());
      outs[run][0] = y;
      outs[run][1] = *layer.params()[0].grad;
      (void)dx;
    }
    for (int i = 0; i < 2; ++i)
      EXPECT_EQ(std::memcmp(outs[0][i].data(), outs[1][i].data(), outs[0][i].numel() * sizeof(float)), 0) << c.name;
  }
}

TEST(MoeLayer, LargeBatchIsBitIdenticalAcrossRuns) {
  // Big enough that the expert-parallel schedule and threaded BLAS both engage.
  MoeConfig c;
  c.hidden_size = 64;
  c.moe_intermediate_size = 128;
  c.num_local_experts = 8;
  c.num_experts_per_tok = 2;
  c.granularity = 4;
  const int T = 512;
  Tensor first;
  for (int run = 0; run < 2; ++run) {
    MoeLayer layer(c);
    Tensor x({T, 64}), y({T, 64}), dx({T, 64});
    fill_normal(x.data(), x.numel(), 1, 1, 0.f, 1.f);
    layer.forward(x.data(), T, y.data(), {});
    layer.backward(x.data(), dx.data());
    if (run == 0) {
      first = layer.experts.dw1;
    } else {
      EXPECT_EQ(std::memcmp(first.data(), layer.experts.dw1.data(), first.numel() * sizeof(float)), 0);
    }
  }
}

TEST(MoeLayer, DroppedPairsContributeNothing) {
  MoeConfig c = small_config("topk_softmax");
  c.capacity_factor = 0.5f;
  MoeLayer dropping(c);
  c.capacity_factor = 0.f;
  MoeLayer dropless(c);
  randomize(dropping, 5);
  randomize(dropless, 5);
  const int T = 16, d = c.hidden_size, k = 2;
  Tensor x({T, d}), y1({T, d}), y2({T, d});
  fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
  dropping.forward(x.data(), T, y1.data(), {});
  dropless.forward(x.data(), T, y2.data(), {});
  ASSERT_GT(dropping.plan().dropped, 0);
  EXPECT_FLOAT_EQ(dropping.plan().dropped_fraction(), static_cast<float>(dropping.plan().dropped) / (T * k));
  // y_dropless − y_dropping = Σ over dropped pairs of g·e(x): a token with nothing dropped is equal.
  for (int t = 0; t < T; ++t) {
    bool any_dropped = dropping.plan().pair_row[t * k] < 0 || dropping.plan().pair_row[t * k + 1] < 0;
    bool all_dropped = dropping.plan().pair_row[t * k] < 0 && dropping.plan().pair_row[t * k + 1] < 0;
    for (int j = 0; j < d; ++j) {
      if (!any_dropped) {
        EXPECT_FLOAT_EQ(y1[t * d + j], y2[t * d + j]);
      }
      if (all_dropped) {
        EXPECT_EQ(y1[t * d + j], 0.f);
      }
    }
  }
}

TEST(MoeLayer, NoisyEvalHasNoNoise) {
  MoeConfig c = small_config("noisy_topk");
  MoeLayer layer(c);
  randomize(layer, 5);
  const int T = 16;
  Tensor x({T, c.hidden_size}), y1({T, c.hidden_size}), y2({T, c.hidden_size});
  fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
  layer.forward(x.data(), T, y1.data(), {false, 1, 0});
  layer.forward(x.data(), T, y2.data(), {false, 2, 0});
  EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.numel() * sizeof(float)), 0);
  layer.forward(x.data(), T, y2.data(), {true, 2, 0});
  EXPECT_NE(std::memcmp(y1.data(), y2.data(), y1.numel() * sizeof(float)), 0) << "training adds noise";
}

TEST(MoeLayer, BalancedAuxLossEqualsCoefficient) {
  // With uniform router weights (zero) every P_i = 1/E; any routing gives α·E·Σ f_i/E = α.
  MoeConfig c = small_config("softmax_topk");
  c.router_init_std = 0.f;
  c.router_aux_loss_coef = 0.01f;
  MoeLayer layer(c);
  const int T = 16;
  Tensor x({T, c.hidden_size}), y({T, c.hidden_size});
  fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
  layer.forward(x.data(), T, y.data(), {});
  EXPECT_NEAR(layer.losses().balance.aux, 0.01f, 1e-7);
}

TEST(MoeLayer, ParameterCounts) {
  MoeConfig c = small_config("topk_softmax");
  c.n_shared_experts = 2;
  c.shared_expert_gate = true;
  MoeLayer layer(c);
  const int64_t d = 12, h = 8;
  EXPECT_EQ(layer.num_params(), 3 * 4 * h * d + 4 * d + 3 * 2 * h * d + d);
  EXPECT_EQ(layer.num_active_params(), 3 * 2 * h * d + 4 * d + 3 * 2 * h * d + d);
  int64_t listed = 0;
  for (const Param& p : layer.params()) listed += static_cast<int64_t>(p.value->numel());
  EXPECT_EQ(listed, layer.num_params());
}

}  // namespace
}  // namespace moe::test
