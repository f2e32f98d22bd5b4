#include "model/hf.h"

#include <algorithm>
#include <optional>
#include <string>

#include "core/error.h"
#include "moe/routers/router.h"

namespace moe {

using json = nlohmann::json;

const char* hf_class_name(HfArch a) {
  static constexpr std::array<const char*, 6> names = {"MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM",
                                                       "OlmoeForCausalLM", "GraniteMoeForCausalLM", "DeepseekForCausalLM"};
  return names[static_cast<size_t>(a)];
}

namespace {

// The fields of one config.json, each read with an error naming the file and the field.
struct Fields {
  const json& j;
  const std::string& where;

  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  [[noreturn]] void bad(const char* key, const std::string& what) const {
    fail(where + ": \"" + key + "\" " + what);
  }
  const json& get(const char* key) const {
    if (!has(key)) bad(key, "is missing; a Hugging Face config.json of this architecture has it");
    return j[key];
  }
  int integer(const char* key, std::optional<int> fallback = std::nullopt) const {
    if (!has(key) && fallback) return *fallback;
    const json& v = get(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (int64_t{1} << 30))
      bad(key, "must be a non-negative integer (got " + v.dump() + ")");
    return v.get<int>();
  }
  double number(const char* key, std::optional<double> fallback = std::nullopt) const {
    if (!has(key) && fallback) return *fallback;
    const json& v = get(key);
    if (!v.is_number()) bad(key, "must be a number (got " + v.dump() + ")");
    return v.get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j[key].is_boolean()) bad(key, "must be true or false (got " + j[key].dump() + ")");
    return j[key].get<bool>();
  }
  std::string string(const char* key, const char* fallback) const {
    if (!has(key)) return fallback;
    if (!j[key].is_string()) bad(key, "must be a string (got " + j[key].dump() + ")");
    return j[key].get<std::string>();
  }
  std::vector<int> integers(const char* key) const {
    std::vector<int> out;
    if (!has(key)) return out;
    if (!j[key].is_array()) bad(key, "must be a list of integers (got " + j[key].dump() + ")");
    for (const json& v : j[key]) {
      if (!v.is_number_integer()) bad(key, "must be a list of integers (got " + j[key].dump() + ")");
      out.push_back(v.get<int>());
    }
    return out;
  }
  // A setting moe.cpp cannot honour unless it has its neutral value.
  void refuse_unless(bool neutral, const char* key, const std::string& why) const {
    if (!neutral) bad(key, "= " + j[key].dump() + " " + why);
  }
};

constexpr int kTrainWindow = 2048;  // training sequence length of an imported model (its context may be longer)

}  // namespace

HfModel model_from_hf_config(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where + " is not a JSON object; give the config.json of a Hugging Face model folder");
  const Fields f{j, where};
  const std::string type = f.string("model_type", "");
  if (type.empty()) f.bad("model_type", "is missing; is this a Hugging Face config.json?");
  if (type.rfind("deepseek", 0) == 0 && (f.has("kv_lora_rank") || f.has("q_lora_rank")))
    fail(where + ": model_type \"" + type + "\" uses multi-head latent attention (kv_lora_rank = " +
         (f.has("kv_lora_rank") ? j["kv_lora_rank"].dump() : "null") +
         "), which moe.cpp does not implement yet; it cannot be imported");
  const std::optional<HfArch> arch = enum_from_name<HfArch>(type);
  if (!arch)
    fail(where + ": model_type \"" + type + "\" is not supported; moe import reads " + enum_choices<HfArch>(", "));
  const HfArch a = *arch;
  f.refuse_unless(f.string("hidden_act", "silu") == "silu", "hidden_act", "is not supported: the experts are SwiGLU (silu)");
  f.refuse_unless(!f.has("rope_scaling"), "rope_scaling", "is not supported: moe.cpp applies plain RoPE");
  f.refuse_unless(!f.has("clip_qkv"), "clip_qkv", "is not supported: moe.cpp does not clip q, k, v");
  if (a == HfArch::deepseek && f.string("scoring_func", "softmax") != "softmax")
    f.bad("scoring_func", "= " + j["scoring_func"].dump() + " is not supported for DeepSeekMoE (softmax)");
  if (a != HfArch::qwen2_moe && f.has("attention_bias"))
    f.refuse_unless(!f.boolean("attention_bias", false), "attention_bias",
                    "is not supported for this architecture (its output projection would have a bias)");

  ModelConfig c;
  c.vocab_size = f.integer("vocab_size");
  c.hidden_size = f.integer("hidden_size");
  c.num_hidden_layers = f.integer("num_hidden_layers");
  c.num_attention_heads = f.integer("num_attention_heads");
  c.num_key_value_heads = f.integer("num_key_value_heads", c.num_attention_heads);
  if (c.num_key_value_heads == c.num_attention_heads) c.num_key_value_heads = 0;
  c.head_dim = f.integer("head_dim", 0);
  if (c.num_attention_heads > 0 && c.head_dim * c.num_attention_heads == c.hidden_size) c.head_dim = 0;
  c.rms_norm_eps = static_cast<float>(f.number("rms_norm_eps"));
  c.rope_theta = static_cast<float>(f.number("rope_theta", 10000.0));
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.initializer_range = static_cast<float>(f.number("initializer_range", 0.02));
  // Sliding-window attention equals full causal attention on sequences no longer than the window, so
  // the context is capped at it.
  int context = f.integer("max_position_embeddings");
  const bool window = a == HfArch::mixtral ? f.has("sliding_window")
                                           : (a == HfArch::qwen2_moe || a == HfArch::qwen3_moe) &&
                                                 f.boolean("use_sliding_window", false) && f.has("sliding_window");
  if (window) context = std::min(context, f.integer("sliding_window"));
  c.context_length = context;
  c.max_position_embeddings = std::min(context, kTrainWindow);
  c.ffn = FfnKind::moe;

  MoeConfig& m = c.moe;
  m.router_aux_loss_coef = static_cast<float>(f.number("router_aux_loss_coef", 0.0));
  m.router_init_std = c.initializer_range;
  switch (a) {
    case HfArch::mixtral:
    case HfArch::granitemoe:
      m.num_local_experts = f.integer("num_local_experts");
      m.num_experts_per_tok = f.integer("num_experts_per_tok");
      m.moe_intermediate_size = c.intermediate_size = f.integer("intermediate_size");
      m.router = router_of_gating(Gating::softmax_of_topk);
      m.router_jitter_noise = static_cast<float>(f.number("router_jitter_noise", 0.0));
      if (a == HfArch::granitemoe) {
        c.embedding_multiplier = static_cast<float>(f.number("embedding_multiplier", 1.0));
        c.residual_multiplier = static_cast<float>(f.number("residual_multiplier", 1.0));
        c.attention_multiplier = static_cast<float>(f.number("attention_multiplier", 1.0));
        c.logits_scaling = static_cast<float>(f.number("logits_scaling", 1.0));
      }
      break;
    case HfArch::deepseek: {
      // DeepSeekMoE: n_shared_experts shared experts of the routed width, ungated; the first
      // first_k_dense_replace blocks dense, then every moe_layer_freq-th block MoE.
      m.num_local_experts = f.integer("n_routed_experts");
      m.num_experts_per_tok = f.integer("num_experts_per_tok");
      m.moe_intermediate_size = f.integer("moe_intermediate_size");
      c.intermediate_size = f.integer("intermediate_size");
      m.router = router_of_gating(Gating::topk_of_softmax);
      m.norm_topk_prob = f.boolean("norm_topk_prob", false);
      m.n_shared_experts = f.integer("n_shared_experts", 0);
      const float alpha = static_cast<float>(f.number("aux_loss_alpha", 0.0));
      (f.boolean("seq_aux", false) ? m.seq_aux_loss_coef : m.expert_loss_coef) = alpha;
      m.router_aux_loss_coef = 0.f;
      const int first = f.integer("first_k_dense_replace", 0), freq = f.integer("moe_layer_freq", 1);
      if (freq < 1) f.bad("moe_layer_freq", "must be at least 1");
      std::vector<int> sparse;
      for (int l = first; l < c.num_hidden_layers; ++l)
        if (l % freq == 0) sparse.push_back(l);
      if (sparse.empty()) c.ffn = FfnKind::dense;
      else if (freq != 1) c.sparse_layers = sparse;
      else c.first_k_dense_replace = first;
      break;
    }
    case HfArch::qwen2_moe:
    case HfArch::qwen3_moe:
    case HfArch::olmoe: {
      m.num_local_experts = f.integer("num_experts");
      m.num_experts_per_tok = f.integer("num_experts_per_tok");
      m.router = router_of_gating(Gating::topk_of_softmax);
      m.norm_topk_prob = f.boolean("norm_topk_prob", false);
      if (a == HfArch::olmoe) {
        m.moe_intermediate_size = c.intermediate_size = f.integer("intermediate_size");
        m.router_z_loss_coef = static_cast<float>(f.number("router_z_loss_coef", 0.0));
        c.qk_norm = QkNorm::full;
        break;
      }
      m.moe_intermediate_size = f.integer("moe_intermediate_size");
      c.intermediate_size = f.integer("intermediate_size");
      if (a == HfArch::qwen2_moe) {
        c.attention_bias = true;  // Qwen2's q, k and v projections always have biases
        if (const int shared = f.integer("shared_expert_intermediate_size", 0); shared > 0) {
          m.n_shared_experts = 1;
          m.shared_expert_intermediate_size = shared;
          m.shared_expert_gate = true;
        }
      } else {
        c.qk_norm = QkNorm::head;
      }
      // Block l is sparse unless listed in mlp_only_layers, and only every decoder_sparse_step-th.
      const std::vector<int> dense_only = f.integers("mlp_only_layers");
      const int step = f.integer("decoder_sparse_step", 1);
      if (step < 1) f.bad("decoder_sparse_step", "must be at least 1");
      std::vector<int> sparse;
      for (int l = 0; l < c.num_hidden_layers; ++l)
        if (std::find(dense_only.begin(), dense_only.end(), l) == dense_only.end() && m.num_local_experts > 0 &&
            (l + 1) % step == 0)
          sparse.push_back(l);
      if (sparse.empty()) c.ffn = FfnKind::dense;
      else if (static_cast<int>(sparse.size()) != c.num_hidden_layers) c.sparse_layers = sparse;
      break;
    }
  }
  try {
    c.validate();
  } catch (const Error& e) {
    fail(where + ": the model it describes is not valid here: " + e.what());
  }
  return {a, c};
}

HfArch hf_arch_of(const ModelConfig& c) {
  if (c.ffn != FfnKind::moe)
    fail("model.ffn = \"" + std::string(name_of(c.ffn)) +
         "\": only MoE models have a Hugging Face architecture to export to (Mixtral, Qwen2/3-MoE, OLMoE, GraniteMoE)");
  const MoeConfig& m = c.moe;
  const Gating g = router_traits(m.router).gating;
  auto refuse = [&](const std::string& what) { fail(what + ": no Hugging Face MoE architecture has it, so it cannot be exported"); };
  if (g == Gating::other) refuse("model.router = \"" + std::string(name_of(m.router)) + "\"");
  if (m.n_group != 1) refuse("model.n_group = " + std::to_string(m.n_group));
  if (m.capacity_factor > 0.f) refuse("model.capacity_factor = " + std::to_string(m.capacity_factor) + " (dropping tokens)");
  if (m.entry_steps > 0) refuse("model.entry_steps = " + std::to_string(m.entry_steps) + " (entry offsets of added experts)");
  if (m.n_shared_experts > 0 && !m.shared_expert_gate && g != Gating::topk_of_softmax)
    refuse("model.n_shared_experts without model.shared_expert_gate and router topk_softmax");
  const bool granite = c.embedding_multiplier != 1.f || c.residual_multiplier != 1.f || c.attention_multiplier != 0.f ||
                       c.logits_scaling != 1.f;
  const bool all_sparse = c.sparse_blocks().size() == static_cast<size_t>(c.num_hidden_layers);
  auto need = [&](bool ok, const char* arch, const std::string& what) {
    if (!ok) fail(std::string("export as ") + arch + ": " + what + "; no Hugging Face MoE architecture has this combination");
  };
  if (g == Gating::softmax_of_topk) {
    need(m.n_shared_experts == 0, "Mixtral/GraniteMoE", "model.n_shared_experts must be 0");
    need(!c.attention_bias && c.qk_norm == QkNorm::none, "Mixtral/GraniteMoE", "no attention_bias and no qk_norm");
    need(all_sparse, "Mixtral/GraniteMoE", "every block must be an MoE block");
    return granite ? HfArch::granitemoe : HfArch::mixtral;
  }
  need(!granite, "Qwen2/3-MoE/OLMoE", "the Granite multipliers need router topk_softmax");
  if (c.qk_norm == QkNorm::full) {
    need(m.n_shared_experts == 0 && !c.attention_bias && all_sparse, "OLMoE",
         "no shared experts, no attention_bias, every block MoE");
    return HfArch::olmoe;
  }
  if (c.qk_norm == QkNorm::head) {
    need(m.n_shared_experts == 0 && !c.attention_bias, "Qwen3-MoE", "no shared experts and no attention_bias");
    return HfArch::qwen3_moe;
  }
  if (m.n_shared_experts > 0 && !m.shared_expert_gate) {
    need(!c.attention_bias && m.shared_expert_intermediate_size == 0, "DeepSeekMoE",
         "no attention_bias, and shared experts of the routed width (shared_expert_intermediate_size = 0)");
    return HfArch::deepseek;
  }
  need(m.n_shared_experts <= 1, "Qwen2-MoE", "model.n_shared_experts at most 1 (one gated shared expert)");
  return HfArch::qwen2_moe;
}

json hf_config_of(const ModelConfig& c, HfArch a) {
  const MoeConfig& m = c.moe;
  json j = {{"architectures", {hf_class_name(a)}},
            {"model_type", name_of(a)},
            {"vocab_size", c.vocab_size},
            {"hidden_size", c.hidden_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"num_attention_heads", c.num_attention_heads},
            {"num_key_value_heads", c.attention().kv_heads()},
            {"head_dim", c.attention().hd()},
            {"hidden_act", "silu"},
            {"max_position_embeddings", c.context()},
            {"rms_norm_eps", c.rms_norm_eps},
            {"rope_theta", c.rope_theta},
            {"rope_scaling", nullptr},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"initializer_range", c.initializer_range},
            {"attention_dropout", 0.0},
            {"num_experts_per_tok", m.k()},
            {"router_aux_loss_coef", m.router_aux_loss_coef},
            {"torch_dtype", "float32"}};
  switch (a) {
    case HfArch::mixtral:
    case HfArch::granitemoe:
      j["num_local_experts"] = m.n_experts();
      j["intermediate_size"] = m.expert_hidden();
      j["router_jitter_noise"] = m.router_jitter_noise;
      j["sliding_window"] = nullptr;
      if (a == HfArch::granitemoe) {
        j["embedding_multiplier"] = c.embedding_multiplier;
        j["residual_multiplier"] = c.residual_multiplier;
        j["attention_multiplier"] = c.attention().scale();
        j["logits_scaling"] = c.logits_scaling;
        j["attention_bias"] = false;
      }
      break;
    case HfArch::olmoe:
      j["num_experts"] = m.n_experts();
      j["intermediate_size"] = m.expert_hidden();
      j["norm_topk_prob"] = m.norm_topk_prob;
      j["router_z_loss_coef"] = m.router_z_loss_coef;
      j["attention_bias"] = false;
      j["clip_qkv"] = nullptr;
      break;
    case HfArch::deepseek: {
      j["n_routed_experts"] = m.n_experts();
      j["n_shared_experts"] = m.n_shared_experts;
      j["moe_intermediate_size"] = m.expert_hidden();
      j["intermediate_size"] = c.intermediate_size;
      j["norm_topk_prob"] = m.norm_topk_prob;
      j["scoring_func"] = "softmax";
      j["first_k_dense_replace"] = c.first_k_dense_replace;
      j["moe_layer_freq"] = 1;
      j["aux_loss_alpha"] = m.seq_aux_loss_coef > 0.f ? m.seq_aux_loss_coef : m.expert_loss_coef;
      j["seq_aux"] = m.seq_aux_loss_coef > 0.f;
      j["attention_bias"] = false;
      if (!c.sparse_layers.empty()) fail("export as DeepSeekMoE: model.sparse_layers is not expressible; use first_k_dense_replace");
      break;
    }
    case HfArch::qwen2_moe:
    case HfArch::qwen3_moe: {
      j["num_experts"] = m.n_experts();
      j["moe_intermediate_size"] = m.expert_hidden();
      j["intermediate_size"] = c.intermediate_size;
      j["norm_topk_prob"] = m.norm_topk_prob;
      j["decoder_sparse_step"] = 1;
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      json dense = json::array();
      for (int l = 0; l < c.num_hidden_layers; ++l)
        if (c.ffn_of(l) != FfnKind::moe) dense.push_back(l);
      j["mlp_only_layers"] = dense;
      if (a == HfArch::qwen2_moe)
        j["shared_expert_intermediate_size"] = m.n_shared_experts > 0 ? m.n_shared_experts * m.shared_width() : 0;
      else
        j["attention_bias"] = false;
      break;
    }
  }
  return j;
}

std::vector<HfTensor> hf_tensors(const ModelConfig& c, HfArch a) {
  std::vector<HfTensor> out;
  auto whole = [&](const std::string& hf, std::vector<int64_t> shape, const std::string& param) {
    size_t n = 1;
    for (int64_t s : shape) n *= static_cast<size_t>(s);
    out.push_back({hf, std::move(shape), {{param, 0, 0, n}}});
  };
  const int64_t d = c.hidden_size, V = c.vocab_size;
  const AttentionConfig at = c.attention();
  const int64_t qd = static_cast<int64_t>(c.num_attention_heads) * at.hd(), kvd = static_cast<int64_t>(at.kv_heads()) * at.hd();
  whole("model.embed_tokens.weight", {V, d}, "model.embed_tokens.weight");
  const bool block_sparse = a == HfArch::mixtral || a == HfArch::granitemoe;  // their MoE lives in block_sparse_moe
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    whole(p + "input_layernorm.weight", {d}, p + "input_layernorm.weight");
    whole(p + "post_attention_layernorm.weight", {d}, p + "post_attention_layernorm.weight");
    for (const char* w : {"q", "k", "v", "o"}) {
      const std::string name = p + "self_attn." + w + "_proj.weight";
      whole(name, {*w == 'q' ? qd : *w == 'o' ? d : kvd, *w == 'o' ? qd : d}, name);
    }
    if (a == HfArch::qwen2_moe)
      for (const char* w : {"q", "k", "v"}) {
        const std::string name = p + "self_attn." + w + "_proj.bias";
        const int64_t n = *w == 'q' ? qd : kvd;
        if (c.attention_bias) whole(name, {n}, name);
        else out.push_back({name, {n}, {}});  // zero: a model without biases exports them as zeros
      }
    if (c.qk_norm != QkNorm::none) {
      const bool head = c.qk_norm == QkNorm::head;
      whole(p + "self_attn.q_norm.weight", {head ? at.hd() : qd}, p + "self_attn.q_norm.weight");
      whole(p + "self_attn.k_norm.weight", {head ? at.hd() : kvd}, p + "self_attn.k_norm.weight");
    }
    const std::string ours = p + "mlp.";
    if (c.ffn_of(l) != FfnKind::moe) {
      const int64_t h = c.intermediate_size;
      whole(p + "mlp.gate_proj.weight", {h, d}, ours + "w1");
      whole(p + "mlp.up_proj.weight", {h, d}, ours + "w3");
      whole(p + "mlp.down_proj.weight", {d, h}, ours + "w2");
      continue;
    }
    const MoeConfig m = c.moe_layer(l);
    const int64_t E = m.n_experts(), h = m.expert_hidden();
    const size_t hd_n = static_cast<size_t>(h * d);
    const std::string hp = p + (block_sparse ? "block_sparse_moe." : "mlp.");
    whole(hp + (a == HfArch::granitemoe ? "router.layer.weight" : "gate.weight"), {E, d}, ours + "router.weight");
    if (a == HfArch::granitemoe) {  // input_linear (E, 2h, d): per expert its w1 rows, then its w3 rows
      HfTensor in{hp + "input_linear.weight", {E, 2 * h, d}, {}};
      for (int64_t e = 0; e < E; ++e) {
        const size_t at_e = static_cast<size_t>(e) * hd_n;
        in.spans.push_back({ours + "experts.w1", at_e, 2 * at_e, hd_n});
        in.spans.push_back({ours + "experts.w3", at_e, 2 * at_e + hd_n, hd_n});
      }
      out.push_back(std::move(in));
      whole(hp + "output_linear.weight", {E, d, h}, ours + "experts.w2");
    } else {
      const bool mixtral = a == HfArch::mixtral;
      for (int64_t e = 0; e < E; ++e) {
        const std::string x = hp + "experts." + std::to_string(e) + ".";
        const size_t at_e = static_cast<size_t>(e) * hd_n;
        out.push_back({x + (mixtral ? "w1" : "gate_proj") + ".weight", {h, d}, {{ours + "experts.w1", at_e, 0, hd_n}}});
        out.push_back({x + (mixtral ? "w3" : "up_proj") + ".weight", {h, d}, {{ours + "experts.w3", at_e, 0, hd_n}}});
        out.push_back({x + (mixtral ? "w2" : "down_proj") + ".weight", {d, h}, {{ours + "experts.w2", at_e, 0, hd_n}}});
      }
    }
    if (m.n_shared_experts > 0) {
      const int64_t s = static_cast<int64_t>(m.n_shared_experts) * m.shared_width();
      const std::string sp = hp + (a == HfArch::deepseek ? "shared_experts." : "shared_expert.");
      whole(sp + "gate_proj.weight", {s, d}, ours + "shared_experts.w1");
      whole(sp + "up_proj.weight", {s, d}, ours + "shared_experts.w3");
      whole(sp + "down_proj.weight", {d, s}, ours + "shared_experts.w2");
      if (m.shared_expert_gate) whole(hp + "shared_expert_gate.weight", {1, d}, ours + "shared_expert_gate.weight");
    }
  }
  whole("model.norm.weight", {d}, "model.norm.weight");
  if (!c.tie_word_embeddings) whole("lm_head.weight", {V, d}, "lm_head.weight");
  return out;
}

}  // namespace moe
