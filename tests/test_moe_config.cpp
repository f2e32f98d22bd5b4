// Every validation rule of MoeConfig gives an error that names the field.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "core/error.h"
#include "moe/moe_layer.h"

namespace moe {
namespace {

struct BadCase {
  const char* name;
  std::function<void(MoeConfig&)> edit;
  const char* field;  // must appear in the message
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class BadConfig : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfig, NamesTheField) {
  MoeConfig c;
  GetParam().edit(c);
  try {
    MoeLayer layer(c);
    FAIL() << "expected an error for " << GetParam().name;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(GetParam().field), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    EXPECT_EQ(msg.rfind("moe config: ", 0), 0u) << msg;
  }
}

const BadCase kBad[] = {
    {"top_k_above_experts", [](MoeConfig& c) { c.top_k = 9; }, "top_k = 9 is larger than experts = 8"},
    {"zero_top_k", [](MoeConfig& c) { c.top_k = 0; }, "top_k"},
    {"negative_d_model", [](MoeConfig& c) { c.d_model = -4; }, "d_model = -4"},
    {"negative_d_ff", [](MoeConfig& c) { c.d_ff_expert = -1; }, "d_ff_expert"},
    {"zero_experts", [](MoeConfig& c) { c.experts = 0; }, "experts = 0"},
    {"granularity_not_dividing", [](MoeConfig& c) { c.granularity = 3; }, "granularity = 3 does not divide d_ff_expert = 1024"},
    {"zero_granularity", [](MoeConfig& c) { c.granularity = 0; }, "granularity"},
    {"unknown_router", [](MoeConfig& c) { c.router = "top2"; }, "router = \"top2\" is not a known router"},
    {"unknown_drop_policy", [](MoeConfig& c) { c.drop_policy = "random"; }, "drop_policy"},
    {"n_group_not_dividing", [](MoeConfig& c) { c.n_group = 3; }, "n_group = 3"},
    {"topk_group_too_large", [](MoeConfig& c) { c.n_group = 4; c.topk_group = 5; }, "topk_group"},
    {"topk_group_too_few_experts", [](MoeConfig& c) { c.n_group = 8; c.topk_group = 1; }, "topk_group"},
    {"jitter_out_of_range", [](MoeConfig& c) { c.jitter_eps = 1.5f; }, "jitter_eps"},
    {"negative_aux", [](MoeConfig& c) { c.aux_loss_coef = -0.1f; }, "aux_loss_coef"},
    {"negative_z", [](MoeConfig& c) { c.z_loss_coef = -1.f; }, "z_loss_coef"},
    {"nan_expert_loss", [](MoeConfig& c) { c.expert_loss_coef = std::nanf(""); }, "expert_loss_coef"},
    {"negative_device_loss", [](MoeConfig& c) { c.device_loss_coef = -1.f; }, "device_loss_coef"},
    {"negative_seq_loss", [](MoeConfig& c) { c.seq_aux_loss_coef = -1.f; }, "seq_aux_loss_coef"},
    {"noisy_loss_wrong_router", [](MoeConfig& c) { c.noisy_loss_coef = 0.1f; }, "noisy_loss_coef"},
    {"device_groups_not_dividing", [](MoeConfig& c) { c.device_groups = 3; }, "device_groups = 3"},
    {"negative_device_groups", [](MoeConfig& c) { c.device_groups = -2; }, "device_groups"},
    {"negative_shared", [](MoeConfig& c) { c.n_shared = -1; }, "n_shared"},
    {"negative_shared_hidden", [](MoeConfig& c) { c.shared_hidden = -8; }, "shared_hidden"},
    {"shared_gate_without_shared", [](MoeConfig& c) { c.shared_gate = true; }, "shared_gate"},
    {"infinite_capacity", [](MoeConfig& c) { c.capacity_factor = INFINITY; }, "capacity_factor"},
    {"negative_router_init", [](MoeConfig& c) { c.router_init_std = -1.f; }, "router_init_std"},
    {"zero_routed_scaling", [](MoeConfig& c) { c.routed_scaling = 0.f; }, "routed_scaling"},
    {"negative_bias_rate", [](MoeConfig& c) { c.bias_update_rate = -1e-3f; }, "bias_update_rate"},
};

INSTANTIATE_TEST_SUITE_P(Rules, BadConfig, ::testing::ValuesIn(kBad),
                         [](const ::testing::TestParamInfo<BadCase>& pi) { return std::string(pi.param.name); });

TEST(Config, DefaultsAreValidAndGranularityKeepsParameters) {
  MoeConfig c;
  EXPECT_NO_THROW(c.validate());
  c.d_model = 64;
  c.d_ff_expert = 128;
  MoeLayer g1(c);
  c.granularity = 8;
  MoeLayer g8(c);
  EXPECT_EQ(g8.cfg.n_experts(), 64);
  EXPECT_EQ(g8.cfg.k(), 16);
  EXPECT_EQ(g8.cfg.expert_hidden(), 16);
  // Expert parameters (total and active) are the same at every granularity; only the router grows.
  const int64_t router_g1 = 8 * 64, router_g8 = 64 * 64;
  EXPECT_EQ(g1.num_params() - router_g1, g8.num_params() - router_g8);
  EXPECT_EQ(g1.num_active_params() - router_g1, g8.num_active_params() - router_g8);
}

}  // namespace
}  // namespace moe
