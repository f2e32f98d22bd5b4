// config.h — the configuration of one PEER layer (docs/MECHANISMS.md §5). Each field has one name, its
// config key under [model.peer]; visit_fields lists them once (see core/config_value.h).
#pragma once
#include <array>
#include <cstdint>

#include "core/enum_names.h"

namespace moe {

// The gate over a head's k retrieved scores.
enum class PeerScore { softmax, sigmoid };
template <>
struct EnumNames<PeerScore> {
  static constexpr const char* what = "PEER score";
  static constexpr std::array<const char*, 2> names = {"softmax", "sigmoid"};
};

// The activation of the single-neuron experts.
enum class PeerActivation { gelu, relu };
template <>
struct EnumNames<PeerActivation> {
  static constexpr const char* what = "PEER activation";
  static constexpr std::array<const char*, 2> names = {"gelu", "relu"};
};

struct PeerConfig {
  int n_keys = 1024;             // N = n_keys² experts
  int heads = 8;                 // h
  int top_k = 16;                // experts per head
  int d_key = 128;               // d_k (split in two halves for the product keys)
  bool query_bn = true;          // BatchNorm on the queries
  PeerScore score = PeerScore::softmax;
  PeerActivation activation = PeerActivation::gelu;
  float bn_eps = 1e-5f;
  float bn_momentum = 0.1f;      // running = (1 − m)·running + m·batch (unbiased variance), as PyTorch

  // Filled in by the model from its own settings (ModelConfig::peer_layer), not config keys of their own.
  int hidden_size = 256;         // d
  float init_std = 0.02f;        // u, v ~ N(0, std) (the model's initializer_range)
  uint64_t seed = 1;
  uint64_t layer_id = 0;

  // The settings above under their config keys (model.peer.<key>), with their meaning.
  template <class Self, class V>
  static void visit_fields(Self& c, V&& v) {
    v("n_keys", c.n_keys, "sub-keys per half: N = n_keys² experts");
    v("heads", c.heads, "retrieval heads h");
    v("top_k", c.top_k, "experts retrieved per head");
    v("d_key", c.d_key, "query width (even: split in two halves)");
    v("query_bn", c.query_bn, "BatchNorm on the queries");
    v("score", c.score, "gate over a head's k scores");
    v("activation", c.activation, "activation of the single-neuron experts");
    v("bn_momentum", c.bn_momentum, "running = (1 - m)·running + m·batch");
  }

  int64_t n_experts() const { return static_cast<int64_t>(n_keys) * n_keys; }
  int64_t num_params() const;  // every parameter, the full tables included
  // Throws moe::Error naming the field and the fix.
  void validate() const;
};

}  // namespace moe
