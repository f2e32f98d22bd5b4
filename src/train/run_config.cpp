#include "train/run_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>
#include <type_traits>

#include "core/check.h"
#include "core/config_value.h"
#include "core/error.h"

namespace moe {

void TrainConfig::validate() const {
  const ConfigCheck check("train");
  check.in_range("batch_size", batch_size, 1, 4096);  // a step's windows are drawn from 4096 stream indices
  check.in_range("expert_parallel", expert_parallel, 1, 1 << 16);
  check.require(batch_size % expert_parallel == 0, "batch_size = " + std::to_string(batch_size) +
                                                       " does not split among expert_parallel = " + std::to_string(expert_parallel) +
                                                       " ranks; make it a multiple of " + std::to_string(expert_parallel));
  check.non_negative("steps", steps);
  check.in_range("grad_accum", grad_accum, 1, 1 << 16);
  check.require(std::isfinite(lr) && lr > 0.f, "lr = " + format_number(lr) + " must be a finite positive number, e.g. 3e-3");
  check.require(beta1 >= 0.f && beta1 < 1.f, "beta1 = " + format_number(beta1) + " must be in [0, 1), e.g. 0.9");
  check.require(beta2 >= 0.f && beta2 < 1.f, "beta2 = " + format_number(beta2) + " must be in [0, 1), e.g. 0.95");
  check.in_range("min_lr_ratio", min_lr_ratio, 0.0, 1.0);
  check.non_negative("warmup_steps", warmup_steps);
  check.non_negative("weight_decay", weight_decay);
  check.require(grad_clip >= 0.f, "grad_clip = " + format_number(grad_clip) + " must be >= 0 (0: no clipping)");
  check.non_negative("eval_every", eval_every);
  check.positive("eval_windows", eval_windows);
  check.in_range("stop_after", stop_after, 0, steps);
  check.require(save_every >= 0, "save_every = " + std::to_string(save_every) + " must be >= 0 (0: only at the end)");
  check.require(keep_checkpoints >= 0, "keep_checkpoints = " + std::to_string(keep_checkpoints) + " must be >= 0 (0: keep all)");
  check.require(max_bad_steps > 0, "max_bad_steps = " + std::to_string(max_bad_steps) +
                                       " must be positive (bad steps in a row before training stops)");
  check.require(spike_factor == 0.f || spike_factor > 1.f,
                "spike_factor = " + format_number(spike_factor) + " must be 0 (off) or above 1, e.g. 3");
  check.require(std::isfinite(distill_weight) && distill_weight >= 0.f,
                "distill_weight = " + format_number(distill_weight) + " must be a finite number >= 0, e.g. 1");
}

namespace {

using nlohmann::json;

// Every field of a run config: v(key, field, meaning) with key "model.…" or "train.…".
template <class Self, class V>
void visit_run_config(Self& c, V&& v) {
  ModelConfig::visit_fields(c.model, [&](const std::string& key, auto& field, const char* meaning) {
    v("model." + key, field, meaning);
  });
  TrainConfig::visit_fields(c.train, [&](const std::string& key, auto& field, const char* meaning) {
    v("train." + key, field, meaning);
  });
}

std::vector<std::string> all_keys() {
  std::vector<std::string> keys;
  RunConfig c;
  visit_run_config(c, [&](const std::string& key, auto&, const char*) { keys.push_back(key); });
  return keys;
}

// Edit distance between two keys, for "did you mean".
size_t distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

void set_field(RunConfig& c, const std::string& key, const json& v, const std::string& where) {
  bool found = false;
  try {
    visit_run_config(c, [&](const std::string& k, auto& field, const char*) {
      if (k != key) return;
      field = config_value<std::decay_t<decltype(field)>>(v, key);
      found = true;
    });
  } catch (const Error& e) {
    fail(where + ": " + e.what() + "; `moe keys` lists every key with its type");
  }
  if (found) return;
  std::string nearest;
  size_t best = 4;  // suggest only a near miss
  for (const std::string& k : all_keys())
    if (const size_t dk = distance(key, k); dk < best) {
      best = dk;
      nearest = k;
    }
  fail(where + ": unknown key \"" + key + "\"; " + (nearest.empty() ? "" : "did you mean " + nearest + "? ") +
       "`moe keys` lists every key");
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

void set_run_config_value(RunConfig& c, const std::string& key, const nlohmann::json& value, const std::string& where) {
  set_field(c, key, value, where.empty() ? "set " + key : where);
}

namespace {

json toml_document(const toml::table& t) {
  json out = json::object();
  for (auto&& [key, value] : t) {
    const std::string k(key.str());
    if (const auto* sub = value.as_table()) {
      out[k] = toml_document(*sub);
    } else if (const auto* a = value.as_array(); a && !a->empty() && a->is_array_of_tables()) {
      json list = json::array();
      for (const toml::node& e : *a) list.push_back(toml_document(*e.as_table()));
      out[k] = list;
    } else {
      out[k] = toml_to_json(value);  // null for what no config key could hold
    }
  }
  return out;
}

}  // namespace

nlohmann::json parse_toml_document(const std::string& text, const std::string& where) {
  try {
    return toml_document(toml::parse(text, where));
  } catch (const toml::parse_error& e) {
    fail(where + ": " + std::string(e.description()) + " at line " + std::to_string(e.source().begin.line));
  }
}

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
    // A run's config.json (or a sweep point's) is a whole config; a TOML file sets keys over the defaults.
    if (toml_path.ends_with(".json"))
      c = run_config_from_json(ss.str(), "config " + toml_path);
    else
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
  visit_run_config(c, [&](const std::string& key, const auto& field, const char*) {
    const size_t dot = key.find('.');
    j[key.substr(0, dot)][key.substr(dot + 1)] = config_json(field);
  });
  return j.dump(2);
}

json run_config_keys() {
  json out = json::array();
  const RunConfig c;
  visit_run_config(c, [&](const std::string& key, const auto& field, const char* meaning) {
    out.push_back({{"key", key}, {"type", config_type(field)}, {"default", config_json(field)}, {"meaning", meaning}});
  });
  return out;
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
