#include "model/config.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "core/check.h"
#include "core/error.h"

namespace moe {

FfnKind ModelConfig::ffn_of(int layer) const {
  if (ffn == FfnKind::dense) return FfnKind::dense;
  const bool sparse = !sparse_layers.empty()
                          ? std::find(sparse_layers.begin(), sparse_layers.end(), layer) != sparse_layers.end()
                          : (ffn == FfnKind::peer ? layer == num_hidden_layers / 2 : layer >= first_k_dense_replace);
  return sparse ? ffn : FfnKind::dense;
}

std::string ModelConfig::ffn_label() const {
  return ffn == FfnKind::moe ? name_of(moe.router) : name_of(ffn);
}

std::vector<int> ModelConfig::sparse_blocks() const {
  std::vector<int> out;
  for (int l = 0; l < num_hidden_layers; ++l)
    if (ffn_of(l) != FfnKind::dense) out.push_back(l);
  return out;
}

std::string ModelConfig::describe_ffn() const {
  std::string blocks;
  for (int l : sparse_blocks()) {
    if (!blocks.empty()) blocks += ",";
    blocks += std::to_string(l);
  }
  char buf[320];
  if (ffn == FfnKind::moe) {
    const MoeConfig m = moe_layer(0);
    std::snprintf(buf, sizeof buf,
                  "moe: router %s, %d routed experts of width %d (G=%d), %d active, %d shared, in blocks %s (the others dense)",
                  name_of(m.router), m.n_experts(), m.expert_hidden(), m.granularity, m.k(), m.n_shared_experts,
                  blocks.c_str());
    return buf;
  }
  if (ffn == FfnKind::peer) {
    std::snprintf(buf, sizeof buf,
                  "peer: %lld experts (%d sub-keys per half), %d heads × top-%d, d_key %d, query BN %s, %s gates, %s, in "
                  "blocks %s (the others dense)",
                  static_cast<long long>(peer.n_experts()), peer.n_keys, peer.heads, peer.top_k, peer.d_key,
                  peer.query_bn ? "on" : "off", name_of(peer.score), name_of(peer.activation), blocks.c_str());
    return buf;
  }
  return "";
}

nlohmann::json ModelConfig::ffn_json() const {
  if (ffn == FfnKind::moe) {
    const MoeConfig m = moe_layer(0);
    return {{"moe", {{"router", name_of(m.router)}, {"routed_experts", m.n_experts()}, {"expert_width", m.expert_hidden()},
                     {"granularity", m.granularity}, {"active_experts", m.k()}, {"shared_experts", m.n_shared_experts}}}};
  }
  if (ffn == FfnKind::peer)
    return {{"peer", {{"experts", peer.n_experts()}, {"n_keys", peer.n_keys}, {"heads", peer.heads}, {"top_k", peer.top_k},
                      {"d_key", peer.d_key}, {"query_bn", peer.query_bn}}}};
  return nlohmann::json::object();
}

ModelConfig::ScalingShape ModelConfig::scaling_shape() const {
  if (ffn == FfnKind::moe) return {moe.num_local_experts, moe.granularity, moe.k()};
  if (ffn == FfnKind::peer) return {peer.n_experts(), 1, static_cast<int64_t>(peer.heads) * peer.top_k};
  return {};
}

int64_t ModelConfig::attention_params() const { return attention().num_params(); }

AttentionConfig ModelConfig::attention() const {
  AttentionConfig a;
  a.hidden_size = hidden_size;
  a.num_attention_heads = num_attention_heads;
  a.num_key_value_heads = num_key_value_heads;
  a.rope_theta = rope_theta;
  a.head_dim = head_dim;
  a.bias = attention_bias;
  a.qk_norm = qk_norm;
  a.norm_eps = rms_norm_eps;
  a.attention_multiplier = attention_multiplier;
  a.bf16 = precision() == Precision::bf16;
  return a;
}

MoeConfig ModelConfig::moe_layer(int layer) const {
  MoeConfig m = moe;
  m.hidden_size = hidden_size;
  m.seed = seed;
  m.layer_id = static_cast<uint64_t>(layer) + 1;
  m.vocab_size = vocab_size;
  return m;
}

PeerConfig ModelConfig::peer_layer(int layer) const {
  PeerConfig p = peer;
  p.hidden_size = hidden_size;
  p.seed = seed;
  p.layer_id = static_cast<uint64_t>(layer) + 1;
  p.init_std = initializer_range;
  return p;
}

void ModelConfig::validate() const {
  const ConfigCheck check("model");
  check.positive("vocab_size", vocab_size);
  check.positive("hidden_size", hidden_size);
  check.positive("num_hidden_layers", num_hidden_layers);
  check.positive("intermediate_size", intermediate_size);
  check.positive("max_position_embeddings", max_position_embeddings);
  check.at_most("vocab_size", vocab_size, 1 << 24, "; choose a smaller vocabulary");
  check.at_most("hidden_size", hidden_size, 1 << 16, "; choose a smaller width");
  check.at_most("num_hidden_layers", num_hidden_layers, 1 << 12, "; choose fewer blocks");
  check.at_most("intermediate_size", intermediate_size, 1 << 20, "; choose a smaller width");
  check.at_most("max_position_embeddings", max_position_embeddings, 1 << 20, "; choose a shorter context");
  check.require(context_length >= 0 && context_length <= (1 << 22),
                "context_length = " + std::to_string(context_length) + " must be in [0, 4194304] (0: max_position_embeddings)");
  check.require(head_dim >= 0, "head_dim = " + std::to_string(head_dim) + " must be >= 0 (0: hidden_size / num_attention_heads)");
  check.positive("embedding_multiplier", embedding_multiplier);
  check.positive("residual_multiplier", residual_multiplier);
  check.positive("logits_scaling", logits_scaling);
  if (ffn == FfnKind::moe) {
    check.at_most("num_local_experts × granularity", static_cast<int64_t>(moe.num_local_experts) * moe.granularity,
                  1 << 20, "; choose fewer experts");
    check.at_most("moe_intermediate_size", moe.moe_intermediate_size, 1 << 20, "; choose a smaller expert width");
    check.at_most("n_shared_experts", moe.n_shared_experts, 1 << 10, "; choose fewer shared experts");
    check.at_most("shared_expert_intermediate_size", moe.shared_expert_intermediate_size, 1 << 20,
                  "; choose a smaller width");
  }
  if (ffn == FfnKind::peer) check.at_most("peer.n_keys", peer.n_keys, 1 << 16, " (n_keys² experts); choose fewer keys");
  for (size_t i = 0; i < sparse_layers.size(); ++i) {
    const int l = sparse_layers[i];
    check.require(l >= 0 && l < num_hidden_layers,
                  "sparse_layers has block " + std::to_string(l) +
                      "; blocks are numbered 0 to num_hidden_layers - 1 = " + std::to_string(num_hidden_layers - 1));
    check.require(std::find(sparse_layers.begin(), sparse_layers.begin() + static_cast<long>(i), l) ==
                      sparse_layers.begin() + static_cast<long>(i),
                  "sparse_layers lists block " + std::to_string(l) + " twice; list each block once");
  }
  check.in_range("first_k_dense_replace", first_k_dense_replace, 0, num_hidden_layers);
  check.positive("rms_norm_eps", rms_norm_eps);
  check.positive("initializer_range", initializer_range);
  attention().validate();
  if (ffn == FfnKind::moe) moe_layer(0).validate();
  if (ffn == FfnKind::peer) peer_layer(0).validate();
}

namespace {

// The parameters of a model by part, each with the settings that size it (for memory errors).
struct ParamPart {
  const char* settings;
  int64_t count;
};

std::vector<ParamPart> param_parts(const ModelConfig& c) {
  const int64_t Vd = static_cast<int64_t>(c.vocab_size) * c.hidden_size;
  std::vector<ParamPart> parts = {
      {"model.vocab_size × model.hidden_size", (c.tie_word_embeddings ? Vd : 2 * Vd) + c.hidden_size},
      {"model.hidden_size × model.num_hidden_layers", 0},
      {"model.num_local_experts × model.moe_intermediate_size", 0},
      {"model.peer.n_keys", 0},
      {"model.intermediate_size", 0}};
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    parts[1].count += c.attention_params() + 2 * c.hidden_size;
    switch (c.ffn_of(l)) {
      case FfnKind::moe: parts[2].count += c.moe_layer(l).num_params(); break;
      case FfnKind::peer: parts[3].count += c.peer_layer(l).num_params(); break;
      case FfnKind::dense: parts[4].count += 3LL * c.intermediate_size * c.hidden_size; break;
    }
  }
  return parts;
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace

int64_t ModelConfig::num_params() const {
  int64_t n = 0;
  for (const ParamPart& p : param_parts(*this)) n += p.count;
  return n;
}

void ModelConfig::check_memory(double bytes_per_param, double other_bytes, const std::string& what) const {
  const double machine = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  std::vector<ParamPart> parts = param_parts(*this);
  double params = 0.0;
  for (const ParamPart& p : parts) params += static_cast<double>(p.count);
  const double need = params * bytes_per_param + other_bytes;
  if (machine <= 0 || need <= machine) return;
  const auto big = std::max_element(parts.begin(), parts.end(), [](const ParamPart& a, const ParamPart& b) { return a.count < b.count; });
  char head[160];
  std::snprintf(head, sizeof head, "model of %.3g parameters needs about %s to %s but this machine has %s; ", params,
                gib(need).c_str(), what.c_str(), gib(machine).c_str());
  if (other_bytes > params * bytes_per_param)
    fail(std::string(head) + "the activations dominate: lower train.batch_size or model.max_position_embeddings");
  fail(std::string(head) + "the largest part (" + std::to_string(big->count) + ") is sized by " + big->settings +
       ": lower " + std::string(big->settings).substr(0, std::string(big->settings).find(' ')));
}

}  // namespace moe
