#include "train/run_config.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <limits>
#include <type_traits>
#include <map>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "core/error.h"

namespace moe {

static std::string num(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

void TrainConfig::validate() const {
  auto bad = [](const std::string& m) { fail("train config: " + m); };
  if (batch_size <= 0) bad("batch_size must be positive");
  if (steps < 0) bad("steps must be >= 0");
  if (grad_accum <= 0 || grad_accum > (1 << 16)) bad("grad_accum must be in [1, 65536]");
  if (!(lr > 0.f) || !std::isfinite(lr)) bad("lr = " + num(lr) + " must be a finite positive number, e.g. 3e-3");
  if (!(beta1 >= 0.f && beta1 < 1.f)) bad("beta1 = " + num(beta1) + " must be in [0, 1), e.g. 0.9");
  if (!(beta2 >= 0.f && beta2 < 1.f)) bad("beta2 = " + num(beta2) + " must be in [0, 1), e.g. 0.95");
  if (min_lr_ratio < 0.f || min_lr_ratio > 1.f) bad("min_lr_ratio must be in [0, 1]");
  if (warmup_steps < 0) bad("warmup_steps must be >= 0");
  if (weight_decay < 0.f) bad("weight_decay must be >= 0");
  if (grad_clip < 0.f) bad("grad_clip must be >= 0 (0: no clipping)");
  if (eval_every < 0 || eval_windows <= 0) bad("eval_every must be >= 0 and eval_windows positive");
  if (stop_after < 0 || stop_after > steps) bad("stop_after must be in [0, steps]");
  if (save_every < 0) bad("save_every must be >= 0 (0: only at the end)");
  if (keep_checkpoints < 0) bad("keep_checkpoints must be >= 0 (0: keep all)");
  if (max_bad_steps <= 0) bad("max_bad_steps must be positive (bad steps in a row before training stops)");
  if (!(spike_factor == 0.f || spike_factor > 1.f)) bad("spike_factor must be 0 (off) or above 1, e.g. 3");
}

namespace {

using nlohmann::json;

// One configurable field: how to set it from JSON (TOML values are converted to JSON first) and read it.
struct Field {
  std::function<void(RunConfig&, const json&, const std::string&)> set;
  std::function<json(const RunConfig&)> get;
};

// A JSON value as the field's type V: integers only from integers within V's range (no wrap, no
// truncation of 8.9 to 8), floats from finite numbers within float's range, strings from strings,
// booleans from booleans. Errors say what the key needs.
template <class V>
V checked_value(const json& v, const std::string& key) {
  if constexpr (std::is_same_v<V, bool>) {
    if (!v.is_boolean()) fail("key \"" + key + "\" must be true or false, not " + v.dump());
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<V>) {
    std::string range = "[";  // (built step by step: g++ 12 warns falsely on "literal" + string&&)
    range += std::to_string(std::numeric_limits<V>::min());
    range += ", ";
    range += std::to_string(std::numeric_limits<V>::max());
    range += "]";
    if (!v.is_number_integer())
      fail("key \"" + key + "\" must be a whole number in " + range + ", not " + v.dump());
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<V>::max()))
        fail("key \"" + key + "\" = " + v.dump() + " is out of range; it must be in " + range);
      return static_cast<V>(u);
    }
    const int64_t i = v.get<int64_t>();
    if ((std::is_unsigned_v<V> && i < 0) ||
        (!std::is_unsigned_v<V> && (i < static_cast<int64_t>(std::numeric_limits<V>::min()) ||
                                    i > static_cast<int64_t>(std::numeric_limits<V>::max()))))
      fail("key \"" + key + "\" = " + v.dump() + " is out of range; it must be in " + range);
    return static_cast<V>(i);
  } else if constexpr (std::is_floating_point_v<V>) {
    if (!v.is_number()) fail("key \"" + key + "\" must be a number, not " + v.dump());
    const double d = v.get<double>();
    if (!std::isfinite(d) || std::fabs(d) > static_cast<double>(std::numeric_limits<V>::max())) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "%g", d);
      fail("key \"" + key + "\" = " + buf + " is not a finite number a float can hold");
    }
    return static_cast<V>(d);
  } else if constexpr (std::is_same_v<V, std::string>) {
    if (!v.is_string()) fail("key \"" + key + "\" must be a string, not " + v.dump());
    return v.get<std::string>();
  } else {  // lists of integers
    if (!v.is_array()) fail("key \"" + key + "\" must be a list, not " + v.dump());
    V out;
    for (const json& e : v) out.push_back(checked_value<typename V::value_type>(e, key));
    return out;
  }
}

template <class Get>
Field make(Get get) {
  return Field{[get](RunConfig& c, const json& v, const std::string& key) {
                 auto& slot = get(c);
                 slot = checked_value<std::decay_t<decltype(slot)>>(v, key);
               },
               [get](const RunConfig& c) { return json(get(const_cast<RunConfig&>(c))); }};
}

const std::map<std::string, Field>& fields() {
  static const std::map<std::string, Field> f = {
      {"model.vocab_size", make([](RunConfig& c) -> int& { return c.model.vocab_size; })},
      {"model.hidden_size", make([](RunConfig& c) -> int& { return c.model.hidden_size; })},
      {"model.num_hidden_layers", make([](RunConfig& c) -> int& { return c.model.num_hidden_layers; })},
      {"model.num_attention_heads", make([](RunConfig& c) -> int& { return c.model.num_attention_heads; })},
      {"model.num_key_value_heads", make([](RunConfig& c) -> int& { return c.model.num_key_value_heads; })},
      {"model.intermediate_size", make([](RunConfig& c) -> int& { return c.model.intermediate_size; })},
      {"model.max_position_embeddings", make([](RunConfig& c) -> int& { return c.model.max_position_embeddings; })},
      {"model.rms_norm_eps", make([](RunConfig& c) -> float& { return c.model.rms_norm_eps; })},
      {"model.rope_theta", make([](RunConfig& c) -> float& { return c.model.rope_theta; })},
      {"model.tie_word_embeddings", make([](RunConfig& c) -> bool& { return c.model.tie_word_embeddings; })},
      {"model.initializer_range", make([](RunConfig& c) -> float& { return c.model.initializer_range; })},
      {"model.ffn", make([](RunConfig& c) -> std::string& { return c.model.ffn; })},
      {"model.first_k_dense_replace", make([](RunConfig& c) -> int& { return c.model.first_k_dense_replace; })},
      {"model.num_local_experts", make([](RunConfig& c) -> int& { return c.model.moe.experts; })},
      {"model.num_experts_per_tok", make([](RunConfig& c) -> int& { return c.model.moe.top_k; })},
      {"model.moe_intermediate_size", make([](RunConfig& c) -> int& { return c.model.moe.d_ff_expert; })},
      {"model.granularity", make([](RunConfig& c) -> int& { return c.model.moe.granularity; })},
      {"model.router", make([](RunConfig& c) -> std::string& { return c.model.moe.router; })},
      {"model.norm_topk_prob", make([](RunConfig& c) -> bool& { return c.model.moe.renormalize; })},
      {"model.routed_scaling_factor", make([](RunConfig& c) -> float& { return c.model.moe.routed_scaling; })},
      {"model.n_group", make([](RunConfig& c) -> int& { return c.model.moe.n_group; })},
      {"model.topk_group", make([](RunConfig& c) -> int& { return c.model.moe.topk_group; })},
      {"model.router_jitter_noise", make([](RunConfig& c) -> float& { return c.model.moe.jitter_eps; })},
      {"model.router_aux_loss_coef", make([](RunConfig& c) -> float& { return c.model.moe.aux_loss_coef; })},
      {"model.router_z_loss_coef", make([](RunConfig& c) -> float& { return c.model.moe.z_loss_coef; })},
      {"model.noisy_loss_coef", make([](RunConfig& c) -> float& { return c.model.moe.noisy_loss_coef; })},
      {"model.expert_loss_coef", make([](RunConfig& c) -> float& { return c.model.moe.expert_loss_coef; })},
      {"model.device_loss_coef", make([](RunConfig& c) -> float& { return c.model.moe.device_loss_coef; })},
      {"model.device_groups", make([](RunConfig& c) -> int& { return c.model.moe.device_groups; })},
      {"model.seq_aux_loss_coef", make([](RunConfig& c) -> float& { return c.model.moe.seq_aux_loss_coef; })},
      {"model.bias_update_speed", make([](RunConfig& c) -> float& { return c.model.moe.bias_update_rate; })},
      {"model.reinforce_coef", make([](RunConfig& c) -> float& { return c.model.moe.reinforce_coef; })},
      {"model.reinforce_baseline_decay", make([](RunConfig& c) -> float& { return c.model.moe.reinforce_decay; })},
      {"model.capacity_factor", make([](RunConfig& c) -> float& { return c.model.moe.capacity_factor; })},
      {"model.drop_policy", make([](RunConfig& c) -> std::string& { return c.model.moe.drop_policy; })},
      {"model.n_shared_experts", make([](RunConfig& c) -> int& { return c.model.moe.n_shared; })},
      {"model.shared_expert_intermediate_size", make([](RunConfig& c) -> int& { return c.model.moe.shared_hidden; })},
      {"model.shared_expert_gate", make([](RunConfig& c) -> bool& { return c.model.moe.shared_gate; })},
      {"model.precision", make([](RunConfig& c) -> std::string& { return c.model.moe.precision; })},
      {"model.router_init_std", make([](RunConfig& c) -> float& { return c.model.moe.router_init_std; })},
      {"model.sparse_layers", make([](RunConfig& c) -> std::vector<int>& { return c.model.sparse_layers; })},
      {"model.peer.n_keys", make([](RunConfig& c) -> int& { return c.model.peer.n_keys; })},
      {"model.peer.heads", make([](RunConfig& c) -> int& { return c.model.peer.heads; })},
      {"model.peer.top_k", make([](RunConfig& c) -> int& { return c.model.peer.top_k; })},
      {"model.peer.d_key", make([](RunConfig& c) -> int& { return c.model.peer.d_key; })},
      {"model.peer.query_bn", make([](RunConfig& c) -> bool& { return c.model.peer.query_bn; })},
      {"model.peer.score", make([](RunConfig& c) -> std::string& { return c.model.peer.score; })},
      {"model.peer.activation", make([](RunConfig& c) -> std::string& { return c.model.peer.activation; })},
      {"model.peer.bn_momentum", make([](RunConfig& c) -> float& { return c.model.peer.bn_momentum; })},
      {"model.seed", make([](RunConfig& c) -> uint64_t& { return c.model.seed; })},
      {"train.corpus", make([](RunConfig& c) -> std::string& { return c.train.corpus; })},
      {"train.data_dir", make([](RunConfig& c) -> std::string& { return c.train.data_dir; })},
      {"train.out", make([](RunConfig& c) -> std::string& { return c.train.out; })},
      {"train.batch_size", make([](RunConfig& c) -> int& { return c.train.batch_size; })},
      {"train.steps", make([](RunConfig& c) -> int& { return c.train.steps; })},
      {"train.grad_accum", make([](RunConfig& c) -> int& { return c.train.grad_accum; })},
      {"train.lr", make([](RunConfig& c) -> float& { return c.train.lr; })},
      {"train.min_lr_ratio", make([](RunConfig& c) -> float& { return c.train.min_lr_ratio; })},
      {"train.warmup_steps", make([](RunConfig& c) -> int& { return c.train.warmup_steps; })},
      {"train.weight_decay", make([](RunConfig& c) -> float& { return c.train.weight_decay; })},
      {"train.beta1", make([](RunConfig& c) -> float& { return c.train.beta1; })},
      {"train.beta2", make([](RunConfig& c) -> float& { return c.train.beta2; })},
      {"train.grad_clip", make([](RunConfig& c) -> float& { return c.train.grad_clip; })},
      {"train.eval_every", make([](RunConfig& c) -> int& { return c.train.eval_every; })},
      {"train.eval_windows", make([](RunConfig& c) -> int& { return c.train.eval_windows; })},
      {"train.save_every", make([](RunConfig& c) -> int& { return c.train.save_every; })},
      {"train.stop_after", make([](RunConfig& c) -> int& { return c.train.stop_after; })},
      {"train.keep_checkpoints", make([](RunConfig& c) -> int& { return c.train.keep_checkpoints; })},
      {"train.max_bad_steps", make([](RunConfig& c) -> int& { return c.train.max_bad_steps; })},
      {"train.spike_factor", make([](RunConfig& c) -> float& { return c.train.spike_factor; })},
      {"train.seed", make([](RunConfig& c) -> uint64_t& { return c.train.seed; })},
  };
  return f;
}

void set_field(RunConfig& c, const std::string& key, const json& v, const std::string& where) {
  auto it = fields().find(key);
  if (it == fields().end())
    fail(where + ": unknown key \"" + key + "\"; the keys are listed in src/train/run_config.h (e.g. model.hidden_size, train.steps)");
  try {
    it->second.set(c, v, key);
  } catch (const Error& e) {
    fail(where + ": " + e.what() + "; see src/train/run_config.h");
  }
}

json toml_to_json(const toml::node& n) {
  if (auto v = n.as_integer()) return json(v->get());
  if (auto v = n.as_floating_point()) return json(v->get());
  if (auto v = n.as_boolean()) return json(v->get());
  if (auto v = n.as_string()) return json(v->get());
  if (auto a = n.as_array()) {  // arrays of scalars (sparse_layers = [2])
    json out = json::array();
    for (const toml::node& e : *a) {
      json j = toml_to_json(e);
      if (j.is_null() || j.is_array()) return json();
      out.push_back(j);
    }
    return out;
  }
  return json();  // tables have no field to go to
}

// Sets every key of table t under the dotted prefix; subtables ([model.peer]) extend the prefix.
void apply_keys(RunConfig& c, const toml::table& t, const std::string& prefix, const std::string& where) {
  for (auto&& [key, value] : t) {
    const std::string full = prefix + "." + std::string(key.str());
    if (const auto* sub = value.as_table()) {
      apply_keys(c, *sub, full, where);
      continue;
    }
    json j = toml_to_json(value);
    if (j.is_null()) fail(where + ": key \"" + full + "\" must be a number, a boolean, a string or a list of them");
    set_field(c, full, j, where);
  }
}

void apply_table(RunConfig& c, const toml::table& t, const std::string& where) {
  for (auto&& [section, node] : t) {
    const auto* tab = node.as_table();
    if (!tab) fail(where + ": top-level key \"" + std::string(section.str()) + "\" must be a [model] or [train] table");
    apply_keys(c, *tab, std::string(section.str()), where);
  }
}

void apply_toml(RunConfig& c, std::string_view text, const std::string& where) {
  try {
    apply_table(c, toml::parse(text, where), where);
  } catch (const toml::parse_error& e) {
    fail(where + ": " + std::string(e.description()) + " at line " + std::to_string(e.source().begin.line));
  }
}

}  // namespace

RunConfig parse_run_config_toml(const std::string& text, const std::string& where) {
  RunConfig c;
  apply_toml(c, text, where);
  c.model.validate();
  c.train.validate();
  return c;
}

RunConfig load_run_config(const std::string& toml_path, const std::vector<std::string>& sets, const RunConfig* base) {
  RunConfig c = base ? *base : RunConfig{};
  if (!toml_path.empty()) {
    std::ifstream in(toml_path, std::ios::binary);
    if (!in) fail("config " + toml_path + ": cannot read it; check the path");
    std::stringstream ss;
    ss << in.rdbuf();
    apply_toml(c, ss.str(), "config " + toml_path);
  }
  for (const std::string& s : sets) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos) fail("--set " + s + ": expected section.key=value, e.g. --set train.steps=100");
    const std::string key = s.substr(0, eq), value = s.substr(eq + 1);
    json j;
    try {
      auto t = toml::parse("v = " + value);
      j = toml_to_json(*t.get("v"));
    } catch (const toml::parse_error&) {
      j = json(value);  // a bare word: take it as a string
    }
    set_field(c, key, j, "--set " + s);
  }
  c.model.validate();
  c.train.validate();
  return c;
}

std::string run_config_to_json(const RunConfig& c) {
  json j = json::object();
  for (const auto& [key, f] : fields()) {
    const size_t dot = key.find('.');
    j[key.substr(0, dot)][key.substr(dot + 1)] = f.get(c);
  }
  return j.dump(2);
}

RunConfig run_config_from_json(const std::string& text, const std::string& where) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(where + ": not a JSON object (corrupt config)");
  RunConfig c;
  for (auto& [section, tab] : j.items()) {
    if (!tab.is_object()) fail(where + ": \"" + section + "\" must be an object");
    for (auto& [key, v] : tab.items()) set_field(c, section + "." + key, v, where);
  }
  c.model.validate();
  c.train.validate();
  return c;
}

}  // namespace moe
