#include "moe/config.h"

#include <cmath>
#include <span>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moe {

namespace {
constexpr const char* kRouters[] = {"topk_softmax", "softmax_topk", "noisy_topk", "sigmoid_bias", "hash",
                                    "base",         "sbase",        "reinforce",  "expert_choice"};
constexpr int kNumRouters = static_cast<int>(sizeof(kRouters) / sizeof(kRouters[0]));
constexpr const char* kPolicies[] = {"position", "probs"};

std::string cfg(const std::string& msg) { return "moe config: " + msg; }

void require(bool ok, const std::string& msg) {
  if (!ok) fail(cfg(msg));
}

std::string num(double v) {
  std::string s = std::to_string(v);
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}
}  // namespace

RouterKind parse_router(const std::string& name) {
  std::string known;
  for (int i = 0; i < kNumRouters; ++i) {
    if (name == kRouters[i]) return static_cast<RouterKind>(i);
    known += (i ? ", " : "") + std::string(kRouters[i]);
  }
  fail(cfg("router = \"" + name + "\" is not a known router; use one of " + known));
}

DropPolicy parse_drop_policy(const std::string& name) {
  for (int i = 0; i < 2; ++i)
    if (name == kPolicies[i]) return static_cast<DropPolicy>(i);
  fail(cfg("drop_policy = \"" + name + "\" is not known; use position or probs"));
}

const char* router_name(RouterKind k) { return kRouters[static_cast<int>(k)]; }

std::string router_choices() {
  std::string s;
  for (int i = 0; i < kNumRouters; ++i) s += (i ? " | " : "") + std::string(kRouters[i]);
  return s;
}
const char* drop_policy_name(DropPolicy p) { return kPolicies[static_cast<int>(p)]; }

void MoeConfig::validate() const {
  auto pos = [](const char* field, int v) {
    require(v > 0, std::string(field) + " = " + std::to_string(v) + " must be positive");
  };
  pos("d_model", d_model);
  pos("d_ff_expert", d_ff_expert);
  pos("experts", experts);
  pos("top_k", top_k);
  pos("granularity", granularity);
  require(top_k <= experts, "top_k = " + std::to_string(top_k) + " is larger than experts = " +
                                std::to_string(experts) + "; choose top_k <= experts");
  require(d_ff_expert % granularity == 0,
          "granularity = " + std::to_string(granularity) + " does not divide d_ff_expert = " +
              std::to_string(d_ff_expert) + "; choose a granularity that divides the expert width");
  RouterKind kind = parse_router(router);
  parse_drop_policy(drop_policy);
  const int E = n_experts();
  pos("n_group", n_group);
  require(E % n_group == 0, "n_group = " + std::to_string(n_group) + " does not divide the " +
                                std::to_string(E) + " routed experts; choose a divisor");
  require(topk_group >= 1 && topk_group <= n_group,
          "topk_group = " + std::to_string(topk_group) + " must be in [1, n_group = " + std::to_string(n_group) + "]");
  require(topk_group * (E / n_group) >= k(),
          "topk_group = " + std::to_string(topk_group) + " groups of " + std::to_string(E / n_group) +
              " experts hold fewer than the " + std::to_string(k()) + " experts each token needs; raise topk_group");
  require(std::isfinite(jitter_eps) && jitter_eps >= 0.f && jitter_eps < 1.f,
          "jitter_eps = " + num(jitter_eps) + " must be in [0, 1)");
  require(std::isfinite(router_init_std) && router_init_std >= 0.f,
          "router_init_std = " + num(router_init_std) + " must be >= 0");
  require(std::isfinite(routed_scaling) && routed_scaling > 0.f,
          "routed_scaling = " + num(routed_scaling) + " must be positive");
  const std::pair<const char*, float> balance_coefs[] = {
      {"aux_loss_coef", aux_loss_coef},       {"z_loss_coef", z_loss_coef},
      {"expert_loss_coef", expert_loss_coef}, {"device_loss_coef", device_loss_coef},
      {"seq_aux_loss_coef", seq_aux_loss_coef}};
  const std::pair<const char*, float> other_coefs[] = {
      {"noisy_loss_coef", noisy_loss_coef}, {"bias_update_rate", bias_update_rate}, {"reinforce_coef", reinforce_coef}};
  using Coefs = std::span<const std::pair<const char*, float>>;
  for (Coefs list : {Coefs(balance_coefs), Coefs(other_coefs)})
    for (auto [field, v] : list)
      require(std::isfinite(v) && v >= 0.f, std::string(field) + " = " + num(v) + " must be a finite number >= 0");
  require(noisy_loss_coef == 0.f || kind == RouterKind::noisy_topk,
          "noisy_loss_coef is set but router = \"" + router + "\"; the importance and load losses need router = \"noisy_topk\"");
  require(std::isfinite(reinforce_decay) && reinforce_decay >= 0.f && reinforce_decay < 1.f,
          "reinforce_decay = " + num(reinforce_decay) + " must be in [0, 1)");
  require(vocab_size >= 0, "vocab_size = " + std::to_string(vocab_size) + " must be >= 0");
  if (kind == RouterKind::hash) {
    require(vocab_size > 0, "router = \"hash\" hashes token ids but vocab_size = 0; set vocab_size (a model sets it from its own)");
    // Hash routing has no router logits: balance losses would be constants with no gradient.
    for (auto [field, v] : balance_coefs)
      require(v == 0.f, std::string(field) + " = " + num(v) + " but router = \"hash\" has no router logits to balance; set " + field + " = 0");
  }
  if (kind == RouterKind::base)
    require(k() == 1, "router = \"base\" assigns exactly one expert per token but top_k·granularity = " + std::to_string(k()) +
                          "; set top_k = 1 and granularity = 1");
  if (kind == RouterKind::expert_choice)
    require(drop_policy == "position", "router = \"expert_choice\" sets its own capacity (each expert takes its top C tokens); "
                                       "leave drop_policy = position");
  require(device_groups >= 0, "device_groups = " + std::to_string(device_groups) + " must be >= 0");
  require(E % n_device_groups() == 0, "device_groups = " + std::to_string(n_device_groups()) +
                                          " does not divide the " + std::to_string(E) + " routed experts; choose a divisor");
  require(std::isfinite(capacity_factor), "capacity_factor must be finite (<= 0 means dropless)");
  require(n_shared >= 0, "n_shared = " + std::to_string(n_shared) + " must be >= 0");
  require(shared_hidden >= 0, "shared_hidden = " + std::to_string(shared_hidden) + " must be >= 0 (0: the routed expert width)");
  require(precision == "fp32" || precision == "bf16",
          "precision = \"" + precision + "\" is not known; use fp32 or bf16");
  require(!shared_gate || n_shared > 0, "shared_gate = true needs n_shared > 0");
}

int64_t MoeConfig::router_params() const {
  const int64_t d = d_model, E = n_experts();
  switch (router_kind()) {
    case RouterKind::hash: return 0;
    case RouterKind::noisy_topk: return 2 * E * d;  // W_r and W_n
    default: return E * d;
  }
}

int64_t MoeConfig::num_params() const {
  const int64_t d = d_model, E = n_experts(), h = expert_hidden();
  return 3 * E * h * d + router_params() + 3 * static_cast<int64_t>(n_shared) * shared_width() * d + (shared_gate ? d : 0);
}

std::string MoeConfig::to_json() const {
  nlohmann::json j = {
      {"d_model", d_model}, {"d_ff_expert", d_ff_expert}, {"experts", experts}, {"top_k", top_k},
      {"granularity", granularity}, {"router", router}, {"renormalize", renormalize},
      {"routed_scaling", routed_scaling}, {"n_group", n_group}, {"topk_group", topk_group},
      {"jitter_eps", jitter_eps}, {"router_init_std", router_init_std}, {"aux_loss_coef", aux_loss_coef},
      {"z_loss_coef", z_loss_coef}, {"noisy_loss_coef", noisy_loss_coef}, {"expert_loss_coef", expert_loss_coef},
      {"device_loss_coef", device_loss_coef}, {"device_groups", device_groups},
      {"seq_aux_loss_coef", seq_aux_loss_coef}, {"bias_update_rate", bias_update_rate},
      {"reinforce_coef", reinforce_coef}, {"reinforce_decay", reinforce_decay}, {"vocab_size", vocab_size},
      {"capacity_factor", capacity_factor}, {"drop_policy", drop_policy}, {"n_shared", n_shared},
      {"shared_hidden", shared_hidden}, {"shared_gate", shared_gate}, {"precision", precision}, {"seed", seed}, {"layer_id", layer_id}};
  return j.dump();
}

}  // namespace moe
