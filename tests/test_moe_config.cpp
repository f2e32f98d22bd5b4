// Every validation rule of MoeConfig gives an error that names the field.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "core/error.h"
#include "moe/moe_layer.h"
#include "train/run_config.h"

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
    {"top_k_above_experts", [](MoeConfig& c) { c.num_experts_per_tok = 9; }, "num_experts_per_tok = 9 is larger than num_local_experts = 8"},
    {"zero_top_k", [](MoeConfig& c) { c.num_experts_per_tok = 0; }, "num_experts_per_tok = 0 must be positive"},
    {"negative_d_model", [](MoeConfig& c) { c.hidden_size = -4; }, "hidden_size = -4 must be positive"},
    {"negative_d_ff", [](MoeConfig& c) { c.moe_intermediate_size = -1; }, "moe_intermediate_size = -1"},
    {"zero_experts", [](MoeConfig& c) { c.num_local_experts = 0; }, "num_local_experts = 0"},
    {"granularity_not_dividing", [](MoeConfig& c) { c.granularity = 3; }, "granularity = 3 does not divide moe_intermediate_size = 1024"},
    {"zero_granularity", [](MoeConfig& c) { c.granularity = 0; }, "granularity"},
    {"n_group_not_dividing", [](MoeConfig& c) { c.n_group = 3; }, "n_group = 3"},
    {"topk_group_too_large", [](MoeConfig& c) { c.n_group = 4; c.topk_group = 5; }, "topk_group"},
    {"topk_group_too_few_experts", [](MoeConfig& c) { c.n_group = 8; c.topk_group = 1; }, "topk_group"},
    {"jitter_out_of_range", [](MoeConfig& c) { c.router_jitter_noise = 1.5f; }, "router_jitter_noise = 1.5 must be in [0, 1)"},
    {"negative_aux", [](MoeConfig& c) { c.router_aux_loss_coef = -0.1f; }, "router_aux_loss_coef = -0.1"},
    {"negative_z", [](MoeConfig& c) { c.router_z_loss_coef = -1.f; }, "router_z_loss_coef = -1"},
    {"nan_expert_loss", [](MoeConfig& c) { c.expert_loss_coef = std::nanf(""); }, "expert_loss_coef"},
    {"negative_device_loss", [](MoeConfig& c) { c.device_loss_coef = -1.f; }, "device_loss_coef"},
    {"negative_seq_loss", [](MoeConfig& c) { c.seq_aux_loss_coef = -1.f; }, "seq_aux_loss_coef"},
    {"noisy_loss_wrong_router", [](MoeConfig& c) { c.noisy_loss_coef = 0.1f; }, "noisy_loss_coef"},
    {"device_groups_not_dividing", [](MoeConfig& c) { c.device_groups = 3; }, "device_groups = 3"},
    {"negative_device_groups", [](MoeConfig& c) { c.device_groups = -2; }, "device_groups"},
    {"negative_shared", [](MoeConfig& c) { c.n_shared_experts = -1; }, "n_shared_experts = -1"},
    {"negative_shared_hidden", [](MoeConfig& c) { c.shared_expert_intermediate_size = -8; }, "shared_expert_intermediate_size = -8"},
    {"shared_gate_without_shared", [](MoeConfig& c) { c.shared_expert_gate = true; }, "shared_expert_gate = true needs n_shared_experts"},
    {"infinite_capacity", [](MoeConfig& c) { c.capacity_factor = INFINITY; }, "capacity_factor"},
    {"negative_router_init", [](MoeConfig& c) { c.router_init_std = -1.f; }, "router_init_std"},
    {"zero_routed_scaling", [](MoeConfig& c) { c.routed_scaling_factor = 0.f; }, "routed_scaling_factor = 0 must be positive"},
    {"negative_bias_rate", [](MoeConfig& c) { c.bias_update_speed = -1e-3f; }, "bias_update_speed"},
};

INSTANTIATE_TEST_SUITE_P(Rules, BadConfig, ::testing::ValuesIn(kBad),
                         [](const ::testing::TestParamInfo<BadCase>& pi) { return std::string(pi.param.name); });

TEST(Config, DefaultsAreValidAndGranularityKeepsParameters) {
  MoeConfig c;
  EXPECT_NO_THROW(c.validate());
  c.hidden_size = 64;
  c.moe_intermediate_size = 128;
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

// The closed sets (router kinds, drop policies, precisions, FFN kinds, PEER's scores and activations)
// are enums; a config that names an unknown member gets one line naming the key, the value and every
// choice.
TEST(Config, UnknownNamesOfClosedSetsListTheChoices) {
  struct Case {
    const char* set;
    const char* choices;
  };
  for (const Case& c : {Case{"model.router=top2", "topk_softmax, softmax_topk, noisy_topk, sigmoid_bias, hash, base, sbase, "
                                                  "reinforce, expert_choice"},
                        Case{"model.drop_policy=random", "position, probs"}, Case{"model.precision=fp16", "fp32, bf16"},
                        Case{"model.ffn=sparse", "moe, dense, peer"}, Case{"model.peer.score=tanh", "softmax, sigmoid"},
                        Case{"model.peer.activation=silu", "gelu, relu"}}) {
    const std::string set = c.set, key = set.substr(0, set.find('=')), value = set.substr(set.find('=') + 1);
    try {
      load_run_config("", {set});
      FAIL() << "expected an error for " << set;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("\"" + key + "\" = \"" + value + "\" is not a known"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::string("use one of ") + c.choices), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  // The names parse back to their enums.
  EXPECT_EQ(load_run_config("", {"model.router=expert_choice"}).model.moe.router, RouterKind::expert_choice);
  EXPECT_EQ(load_run_config("", {"model.precision=bf16"}).model.moe.precision, Precision::bf16);
}

}  // namespace
}  // namespace moe
