// config.h — the configuration of the language model: its sizes, which FFN each block holds, and the
// MoE and PEER layers' settings. Field names follow the Hugging Face configs (Mixtral, DeepSeek-V2,
// Qwen2-MoE) where they exist; visit_fields lists every config key of [model] once.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/enum_names.h"
#include "moe/config.h"
#include "nn/attention.h"
#include "peer/config.h"

namespace moe {

// The FFN of the sparse blocks; the other blocks keep the dense SwiGLU.
enum class FfnKind { moe, dense, peer };
template <>
struct EnumNames<FfnKind> {
  static constexpr const char* what = "FFN kind";
  static constexpr std::array<const char*, 3> names = {"moe", "dense", "peer"};
};

struct ModelConfig {
  int vocab_size = 4096;
  int hidden_size = 256;
  int num_hidden_layers = 4;
  int num_attention_heads = 4;
  int num_key_value_heads = 0;       // 0: num_attention_heads
  int intermediate_size = 512;       // width of the dense SwiGLU FFN
  int max_position_embeddings = 128; // training sequence length
  int context_length = 0;            // longest sequence at inference (0: max_position_embeddings)
  int head_dim = 0;                  // 0: hidden_size / num_attention_heads
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  bool attention_bias = false;       // Qwen2: q/k/v projections with biases
  QkNorm qk_norm = QkNorm::none;     // Qwen3-MoE: head; OLMoE: full
  // GraniteMoE's scales: x₀ = m_e·embed, x ← x + m_r·f(x) for attention and FFN, scores scaled by
  // m_a (0: 1/√head_dim), logits divided by logits_scaling.
  float embedding_multiplier = 1.f;
  float residual_multiplier = 1.f;
  float attention_multiplier = 0.f;
  float logits_scaling = 1.f;
  bool tie_word_embeddings = false;
  float initializer_range = 0.02f;
  FfnKind ffn = FfnKind::moe;
  int first_k_dense_replace = 0;     // DeepSeek: the first k blocks keep a dense FFN
  // The blocks whose FFN is the sparse one (ffn = moe or peer); the others are dense. Empty: for moe
  // every block from first_k_dense_replace on, for peer the middle block (num_hidden_layers / 2).
  std::vector<int> sparse_layers;
  // The MoE layer of every MoE block (hidden_size, vocab_size, seed and layer_id filled in). Default:
  // Mixtral-style top-2 of 8 experts of width 256, as many active FFN parameters as the dense FFN of
  // width 512.
  MoeConfig moe = [] {
    MoeConfig m;
    m.moe_intermediate_size = 256;
    m.router_aux_loss_coef = 1e-2f;
    return m;
  }();
  // The PEER layer of every PEER block (hidden_size, seed, layer_id and init_std filled in).
  PeerConfig peer = [] {
    PeerConfig p;
    p.n_keys = 128;
    p.d_key = 64;
    return p;
  }();
  uint64_t seed = 1;

  // Every config key of [model] with its meaning: the model's own, the MoE layer's (flat:
  // model.num_local_experts) and the PEER layer's (model.peer.n_keys).
  template <class Self, class V>
  static void visit_fields(Self& c, V&& v) {
    v("vocab_size", c.vocab_size, "tokenizer vocabulary (token ids are < vocab_size)");
    v("hidden_size", c.hidden_size, "model width d");
    v("num_hidden_layers", c.num_hidden_layers, "transformer blocks");
    v("num_attention_heads", c.num_attention_heads, "attention heads");
    v("num_key_value_heads", c.num_key_value_heads, "key/value heads for grouped-query attention (0: as many as heads)");
    v("intermediate_size", c.intermediate_size, "width of the dense SwiGLU FFN");
    v("max_position_embeddings", c.max_position_embeddings, "training sequence length");
    v("context_length", c.context_length, "longest sequence at inference (0: max_position_embeddings)");
    v("head_dim", c.head_dim, "width of one attention head (0: hidden_size / num_attention_heads)");
    v("rms_norm_eps", c.rms_norm_eps, "RMSNorm epsilon");
    v("rope_theta", c.rope_theta, "RoPE base");
    v("attention_bias", c.attention_bias, "q/k/v projections with biases (Qwen2)");
    v("qk_norm", c.qk_norm, "RMSNorm of q and k before RoPE: per head (Qwen3) or over the projection (OLMoE)");
    v("embedding_multiplier", c.embedding_multiplier, "GraniteMoE: the token embedding scaled by it");
    v("residual_multiplier", c.residual_multiplier, "GraniteMoE: each block's attention and FFN output scaled by it");
    v("attention_multiplier", c.attention_multiplier, "GraniteMoE: attention score scale (0: 1/sqrt(head_dim))");
    v("logits_scaling", c.logits_scaling, "GraniteMoE: logits divided by it");
    v("tie_word_embeddings", c.tie_word_embeddings, "the LM head shares the token embedding");
    v("initializer_range", c.initializer_range, "std of the normal initialisation");
    v("ffn", c.ffn, "FFN of the sparse blocks (the others are dense)");
    v("first_k_dense_replace", c.first_k_dense_replace, "DeepSeek: the first k blocks keep a dense FFN");
    v("sparse_layers", c.sparse_layers, "blocks with the sparse FFN (empty: all MoE blocks, or the middle PEER block)");
    MoeConfig::visit_fields(c.moe, v);
    PeerConfig::visit_fields(c.peer, [&](const std::string& key, auto& field, const char* meaning) {
      v("peer." + key, field, meaning);
    });
    v("seed", c.seed, "parameter initialisation and the layers' random streams");
  }

  // The FFN of block `layer`: ffn for the sparse blocks, dense for the others.
  FfnKind ffn_of(int layer) const;
  // In words, for reports: "dense", the router's name for MoE, "peer".
  std::string ffn_label() const;
  std::vector<int> sparse_blocks() const;  // the blocks whose FFN is not dense
  // The sparse FFN's settings for `moe inspect`: a line ("moe: router topk_softmax, 8 routed experts
  // …, in blocks 0,1,2,3 (the others dense)") and an object under its kind ({"moe": {...}}); empty
  // for a dense model.
  std::string describe_ffn() const;
  nlohmann::json ffn_json() const;
  // What the scaling laws read (docs/MECHANISMS.md §7) of the sparse FFN: E, its experts at
  // granularity 1 (MoE: num_local_experts; PEER: its n_keys² experts; dense: 1), G, and the experts
  // a token uses (k·G; dense: 1).
  struct ScalingShape {
    int64_t experts = 1;
    int granularity = 1;
    int64_t active_experts = 1;
  };
  ScalingShape scaling_shape() const;
  AttentionConfig attention() const;
  int64_t attention_params() const;      // of one block: W_q, W_k, W_v, W_o, biases, QK-norm weights
  int context() const { return context_length > 0 ? context_length : max_position_embeddings; }
  // The arithmetic of the model's large GEMMs (FFNs, attention's projections, LM head): model.precision.
  Precision precision() const { return moe.precision; }
  MoeConfig moe_layer(int layer) const;  // moe with hidden_size, vocab_size, seed and layer_id filled in
  PeerConfig peer_layer(int layer) const;
  void validate() const;                 // throws moe::Error naming the field
  int64_t num_params() const;            // every parameter of the model it describes
  // Throws moe::Error, naming the settings that make the model big, when `bytes_per_param` bytes
  // for each parameter plus `other_bytes` exceed this machine's memory (`what`: "train", "load").
  void check_memory(double bytes_per_param, double other_bytes, const std::string& what) const;
};

}  // namespace moe
