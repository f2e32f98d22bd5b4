#include "moe/config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/config_value.h"
#include "moe/routers/router.h"

namespace moe {

std::vector<std::pair<const char*, float>> MoeConfig::balance_coefs() const {
  return {{"router_aux_loss_coef", router_aux_loss_coef},
          {"router_z_loss_coef", router_z_loss_coef},
          {"expert_loss_coef", expert_loss_coef},
          {"device_loss_coef", device_loss_coef},
          {"seq_aux_loss_coef", seq_aux_loss_coef}};
}

void MoeConfig::validate() const {
  const ConfigCheck check("moe");
  check.positive("hidden_size", hidden_size);
  check.positive("moe_intermediate_size", moe_intermediate_size);
  check.positive("num_local_experts", num_local_experts);
  check.positive("num_experts_per_tok", num_experts_per_tok);
  check.positive("granularity", granularity);
  check.require(num_experts_per_tok <= num_local_experts,
                "num_experts_per_tok = " + std::to_string(num_experts_per_tok) + " is larger than num_local_experts = " +
                    std::to_string(num_local_experts) + "; choose num_experts_per_tok <= num_local_experts");
  check.require(moe_intermediate_size % granularity == 0,
                "granularity = " + std::to_string(granularity) + " does not divide moe_intermediate_size = " +
                    std::to_string(moe_intermediate_size) + "; choose a granularity that divides the expert width");
  const int E = n_experts();
  check.positive("n_group", n_group);
  check.require(E % n_group == 0, "n_group = " + std::to_string(n_group) + " does not divide the " + std::to_string(E) +
                                      " routed experts; choose a divisor");
  check.require(topk_group >= 1 && topk_group <= n_group, "topk_group = " + std::to_string(topk_group) +
                                                              " must be in [1, n_group = " + std::to_string(n_group) + "]");
  check.require(topk_group * (E / n_group) >= k(),
                "topk_group = " + std::to_string(topk_group) + " groups of " + std::to_string(E / n_group) +
                    " experts hold fewer than the " + std::to_string(k()) + " experts each token needs; raise topk_group");
  check.in_range("router_jitter_noise", router_jitter_noise, 0.0, 1.0, /*open_above=*/true);
  check.non_negative("router_init_std", router_init_std);
  check.require(std::isfinite(routed_scaling_factor), "routed_scaling_factor must be finite");
  check.positive("routed_scaling_factor", routed_scaling_factor);
  for (auto [field, v] : balance_coefs()) check.non_negative(field, v);
  check.non_negative("noisy_loss_coef", noisy_loss_coef);
  check.non_negative("bias_update_speed", bias_update_speed);
  check.non_negative("reinforce_coef", reinforce_coef);
  check.in_range("reinforce_baseline_decay", reinforce_baseline_decay, 0.0, 1.0, /*open_above=*/true);
  check.non_negative("vocab_size", vocab_size);
  check.non_negative("device_groups", device_groups);
  check.require(E % n_device_groups() == 0, "device_groups = " + std::to_string(n_device_groups()) +
                                                " does not divide the " + std::to_string(E) +
                                                " routed experts; choose a divisor");
  check.require(std::isfinite(capacity_factor), "capacity_factor must be finite (<= 0 means dropless)");
  check.non_negative("n_shared_experts", n_shared_experts);
  check.non_negative("entry_steps", entry_steps);
  check.require(shared_expert_intermediate_size >= 0,
                "shared_expert_intermediate_size = " + std::to_string(shared_expert_intermediate_size) +
                    " must be >= 0 (0: the routed expert width)");
  check.require(!shared_expert_gate || n_shared_experts > 0, "shared_expert_gate = true needs n_shared_experts > 0");
  check_router_config(*this, check);  // the rules of the chosen router
}

int64_t MoeConfig::router_params() const {
  return static_cast<int64_t>(router_traits(router).weight_matrices) * n_experts() * hidden_size;
}

int64_t MoeConfig::num_params() const {
  const int64_t d = hidden_size, E = n_experts(), h = expert_hidden();
  return 3 * E * h * d + router_params() + 3 * static_cast<int64_t>(n_shared_experts) * shared_width() * d +
         (shared_expert_gate ? d : 0);
}

std::string MoeConfig::to_json() const {
  nlohmann::json j = {{"hidden_size", hidden_size}, {"vocab_size", vocab_size}, {"seed", seed}, {"layer_id", layer_id}};
  visit_fields(*this, [&](const std::string& key, const auto& field, const char*) { j[key] = config_json(field); });
  return j.dump();
}

}  // namespace moe
