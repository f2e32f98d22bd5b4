// Finite-difference checks of MoeLayer::backward for every router and option that carries a gradient:
// the gradient of J = Σ y·dy + (all loss terms) w.r.t. x and every parameter.
#include <gtest/gtest.h>

#include <cmath>

#include "moe_cases.h"

namespace moe::test {
namespace {

struct Eval {
  double J;
  std::vector<int32_t> experts;
  std::vector<int32_t> rows;
};

Eval objective(MoeLayer& layer, const LayerCase& c, const Tensor& x, const Tensor& dy) {
  Tensor y({c.T, c.cfg.hidden_size});
  case_forward(layer, c, x.data(), y.data());
  double J = layer.losses().total();
  for (size_t i = 0; i < y.numel(); ++i) J += static_cast<double>(y[i]) * dy[i];
  return {J, layer.routing().expert, layer.plan().pair_row};
}

class MoeGradient : public ::testing::TestWithParam<LayerCase> {};

TEST_P(MoeGradient, MatchesFiniteDifferences) {
  const LayerCase& c = GetParam();
  MoeLayer layer(c.cfg);
  randomize(layer, 5);
  Tensor x({c.T, c.cfg.hidden_size}), dy({c.T, c.cfg.hidden_size}), y({c.T, c.cfg.hidden_size}), dx({c.T, c.cfg.hidden_size});
  fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 9, 2, 0.f, 1.f);

  layer.zero_grad();
  case_forward(layer, c, x.data(), y.data());
  layer.backward(dy.data(), dx.data());
  const Eval base = objective(layer, c, x, dy);

  std::vector<std::pair<std::string, std::pair<Tensor*, Tensor>>> targets;
  targets.push_back({"x", {&x, dx}});
  for (Param& p : layer.params()) targets.push_back({p.name, {p.value, *p.grad}});

  const float eps = 1e-2f;
  int checked = 0, skipped = 0;
  for (auto& [name, tg] : targets) {
    Tensor* v = tg.first;
    const Tensor& grad = tg.second;
    const size_t n = v->numel();
    const size_t samples = std::min<size_t>(n, 24);
    for (size_t s = 0; s < samples; ++s) {
      const size_t i = n <= 24 ? s : static_cast<size_t>(rng_uniform(77, checked + skipped, s) * static_cast<float>(n)) % n;
      const float orig = (*v)[i];
      (*v)[i] = orig + eps;
      Eval plus = objective(layer, c, x, dy);
      (*v)[i] = orig - eps;
      Eval minus = objective(layer, c, x, dy);
      (*v)[i] = orig;
      // A perturbation that changes a discrete choice (selection, capacity) has no derivative to check.
      if (plus.experts != base.experts || minus.experts != base.experts || plus.rows != base.rows ||
          minus.rows != base.rows) {
        ++skipped;
        continue;
      }
      const double fd = (plus.J - minus.J) / (2.0 * eps);
      const double an = grad[i];
      EXPECT_NEAR(an, fd, 2e-3 + 2e-2 * std::max(std::fabs(fd), std::fabs(an)))
          << c.name << ": d/d " << name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 8 * static_cast<int>(targets.size())) << "too many entries skipped: " << skipped;
}

INSTANTIATE_TEST_SUITE_P(AllRouters, MoeGradient, ::testing::ValuesIn(layer_cases()),
                         [](const ::testing::TestParamInfo<LayerCase>& pi) { return pi.param.name; });

}  // namespace
}  // namespace moe::test
