// Parity of the MoE layer with the PyTorch reference tests/torch_ref/moe_ref.py (Debian's
// python3-torch, float64 autograd): forward output, every loss term, the input gradient and every
// parameter gradient, for each router and option, at rtol 1e-4.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/safetensors.h"
#include "moe/routers/routers.h"
#include "moe_cases.h"

#ifndef MOE_SOURCE_DIR
#error "MOE_SOURCE_DIR must point at the source tree"
#endif
#ifndef MOE_TORCH_PYTHON
#define MOE_TORCH_PYTHON "/usr/bin/python3"
#endif

namespace moe::test {
namespace {

// |a − b| <= rtol·|b| + atol_rel·max|b| elementwise; reports the worst entry.
void expect_close(const Tensor& got, const Tensor& want, const std::string& what, double rtol = 1e-4,
                  double atol_rel = 1e-5) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  double scale = 0.0;
  for (size_t i = 0; i < want.numel(); ++i) scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
  size_t bad = 0, worst = 0;
  double worst_excess = 0.0;
  for (size_t i = 0; i < want.numel(); ++i) {
    double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    double tol = rtol * std::fabs(want[i]) + atol_rel * scale + 1e-12;
    if (err > tol) {
      ++bad;
      if (err - tol > worst_excess) { worst_excess = err - tol; worst = i; }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << want.numel() << " entries off; worst [" << worst
                     << "] got " << got[worst] << " want " << want[worst];
}

class MoeTorchParity : public ::testing::TestWithParam<LayerCase> {};

TEST_P(MoeTorchParity, MatchesPyTorch) {
  const LayerCase& c = GetParam();
  MoeLayer layer(c.cfg);
  randomize(layer, 5);
  const int T = c.T, d = c.cfg.hidden_size;
  Tensor x({T, d}), dy({T, d}), y({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 9, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 9, 2, 0.f, 1.f);
  layer.zero_grad();
  case_forward(layer, c, x.data(), y.data());
  layer.backward(dy.data(), dx.data());

  TensorFile in;
  in.metadata["config"] = c.cfg.to_json();
  in.metadata["training"] = c.training ? "1" : "0";
  in.metadata["seq_len"] = std::to_string(c.seq_len);
  in.tensors["x"] = x;
  in.tensors["dy"] = dy;
  for (Param& p : layer.params()) in.tensors[p.name] = *p.value;
  if (auto* noisy = dynamic_cast<NoisyTopkRouter*>(layer.router.get())) in.tensors["noise"] = noisy->noise;
  if (!layer.jitter().empty()) in.tensors["jitter"] = layer.jitter();
  if (Tensor* b = layer.router->selection_bias()) in.tensors["bias"] = *b;
  if (auto* hash = dynamic_cast<HashRouter*>(layer.router.get())) {
    in.tensors["hash_table"] = Tensor({static_cast<int64_t>(hash->table.size())});
    for (size_t i = 0; i < hash->table.size(); ++i) in.tensors["hash_table"][i] = static_cast<float>(hash->table[i]);
    in.tensors["tokens"] = Tensor({T});
    for (int t = 0; t < T; ++t) in.tensors["tokens"][static_cast<size_t>(t)] = static_cast<float>(c.tokens[static_cast<size_t>(t)]);
  }
  if (c.cfg.router == RouterKind::base && c.training) {  // the auction's assignment (its optimality: test_routers)
    in.tensors["assignment"] = Tensor({T});
    for (int t = 0; t < T; ++t) in.tensors["assignment"][static_cast<size_t>(t)] = static_cast<float>(layer.routing().expert[static_cast<size_t>(t)]);
  }
  if (auto* rl = dynamic_cast<ReinforceRouter*>(layer.router.get())) {
    if (c.training) in.tensors["uniform"] = rl->draws;
    if (!c.reward.empty()) {
      in.tensors["reward"] = Tensor({T});
      std::copy(c.reward.begin(), c.reward.end(), in.tensors["reward"].data());
      in.tensors["baseline"] = rl->baseline;
    }
  }

  const std::string dir = ::testing::TempDir();
  const std::string case_path = dir + "/moe_parity_" + c.name + ".safetensors";
  const std::string out_path = dir + "/moe_parity_" + c.name + ".out.safetensors";
  save_safetensors(case_path, in);
  const std::string cmd = std::string(MOE_TORCH_PYTHON) + " " + MOE_SOURCE_DIR + "/tests/torch_ref/moe_ref.py " +
                          case_path + " " + out_path;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "the PyTorch reference failed: " << cmd
                                         << " (needs Debian's python3-torch: run scripts/setup.sh)";
  TensorFile ref = load_safetensors(out_path);

  // Same experts chosen, in the same order, and the same pairs kept.
  const Tensor& sel = ref.tensors.at("experts");
  ASSERT_EQ(sel.numel(), layer.routing().expert.size());
  for (size_t i = 0; i < sel.numel(); ++i)
    ASSERT_EQ(static_cast<int>(sel[i]), layer.routing().expert[i]) << "selection differs at pair " << i;
  const Tensor& keep = ref.tensors.at("keep");
  for (size_t i = 0; i < keep.numel(); ++i)
    ASSERT_EQ(keep[i] != 0.f, layer.plan().pair_row[i] >= 0) << "capacity keeps a different pair " << i;

  expect_close(y, ref.tensors.at("y"), "y");
  expect_close(dx, ref.tensors.at("dx"), "dx");
  for (Param& p : layer.params()) expect_close(*p.grad, ref.tensors.at("grad." + p.name), "grad " + p.name);

  const MoeLosses& L = layer.losses();
  const std::pair<const char*, float> ours[] = {
      {"aux", L.balance.aux},       {"z", L.balance.z},           {"expert", L.balance.expert},
      {"device", L.balance.device}, {"seq", L.balance.seq},       {"importance", L.router.importance},
      {"load", L.router.load},     {"rl", L.router.rl}};
  for (auto [name, v] : ours) {
    auto it = ref.tensors.find(std::string("loss.") + name);
    if (it == ref.tensors.end()) {
      EXPECT_EQ(v, 0.f) << "loss " << name << " is not in the reference";
      continue;
    }
    EXPECT_NEAR(v, it->second[0], 1e-4 * std::fabs(it->second[0]) + 1e-7) << "loss " << name;
  }
  std::filesystem::remove(case_path);
  std::filesystem::remove(out_path);
}

INSTANTIATE_TEST_SUITE_P(AllRouters, MoeTorchParity, ::testing::ValuesIn(layer_cases()),
                         [](const ::testing::TestParamInfo<LayerCase>& pi) { return pi.param.name; });

}  // namespace
}  // namespace moe::test
