#include "model/transformer.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "nn/cross_entropy.h"

namespace moe {

AttentionConfig ModelConfig::attention() const {
  AttentionConfig a;
  a.d_model = hidden_size;
  a.n_heads = num_attention_heads;
  a.n_kv_heads = num_key_value_heads;
  a.rope_theta = rope_theta;
  return a;
}

MoeConfig ModelConfig::moe_layer(int layer) const {
  MoeConfig m = moe;
  m.d_model = hidden_size;
  m.seed = seed;
  m.layer_id = static_cast<uint64_t>(layer) + 1;
  m.router_init_std = moe.router_init_std;
  m.vocab_size = vocab_size;
  return m;
}

PeerConfig ModelConfig::peer_layer(int layer) const {
  PeerConfig p = peer;
  p.d_model = hidden_size;
  p.seed = seed;
  p.layer_id = static_cast<uint64_t>(layer) + 1;
  p.init_std = initializer_range;
  return p;
}

bool ModelConfig::is_sparse_block(int layer) const {
  if (!sparse_layers.empty())
    return std::find(sparse_layers.begin(), sparse_layers.end(), layer) != sparse_layers.end();
  return ffn == "peer" ? layer == num_hidden_layers / 2 : layer >= first_k_dense_replace;
}

void ModelConfig::validate() const {
  auto bad = [](const std::string& m) { fail("model config: " + m); };
  auto pos = [&](const char* f, int v) {
    if (v <= 0) bad(std::string(f) + " = " + std::to_string(v) + " must be positive");
  };
  pos("vocab_size", vocab_size);
  pos("hidden_size", hidden_size);
  pos("num_hidden_layers", num_hidden_layers);
  pos("intermediate_size", intermediate_size);
  pos("max_position_embeddings", max_position_embeddings);
  // Upper bounds far above any model this engine trains, so that size arithmetic cannot overflow.
  auto at_most = [&](const char* f, int64_t v, int64_t cap, const char* why) {
    if (v > cap) bad(std::string(f) + " = " + std::to_string(v) + " is above " + std::to_string(cap) + why);
  };
  at_most("vocab_size", vocab_size, 65536, " (token shards hold uint16 ids)");
  at_most("hidden_size", hidden_size, 1 << 16, "; choose a smaller width");
  at_most("num_hidden_layers", num_hidden_layers, 1 << 12, "; choose fewer blocks");
  at_most("intermediate_size", intermediate_size, 1 << 20, "; choose a smaller width");
  at_most("max_position_embeddings", max_position_embeddings, 1 << 20, "; choose a shorter context");
  if (ffn == "moe") {
    at_most("num_local_experts × granularity", static_cast<int64_t>(moe.experts) * moe.granularity, 1 << 20, "; choose fewer experts");
    at_most("moe_intermediate_size", moe.d_ff_expert, 1 << 20, "; choose a smaller expert width");
    at_most("n_shared_experts", moe.n_shared, 1 << 10, "; choose fewer shared experts");
    at_most("shared_expert_intermediate_size", moe.shared_hidden, 1 << 20, "; choose a smaller width");
  }
  if (ffn == "peer") at_most("peer.n_keys", peer.n_keys, 1 << 16, " (n_keys² experts); choose fewer keys");
  if (ffn != "moe" && ffn != "dense" && ffn != "peer") bad("ffn = \"" + ffn + "\" is not known; use moe, dense or peer");
  for (size_t i = 0; i < sparse_layers.size(); ++i) {
    const int l = sparse_layers[i];
    if (l < 0 || l >= num_hidden_layers)
      bad("sparse_layers has block " + std::to_string(l) + "; blocks are numbered 0 to num_hidden_layers - 1 = " +
          std::to_string(num_hidden_layers - 1));
    if (std::find(sparse_layers.begin(), sparse_layers.begin() + static_cast<long>(i), l) != sparse_layers.begin() + static_cast<long>(i))
      bad("sparse_layers lists block " + std::to_string(l) + " twice; list each block once");
  }
  if (first_k_dense_replace < 0 || first_k_dense_replace > num_hidden_layers)
    bad("first_k_dense_replace = " + std::to_string(first_k_dense_replace) + " must be in [0, num_hidden_layers]");
  if (!(rms_norm_eps > 0.f)) bad("rms_norm_eps must be positive");
  if (!(initializer_range > 0.f)) bad("initializer_range must be positive");
  attention().validate();
  if (ffn == "moe") moe_layer(0).validate();
  if (ffn == "peer") peer_layer(0).validate();
}

TransformerLM::TransformerLM(const ModelConfig& c, ParamInit init) : cfg(c) {
  cfg.validate();
  cfg.check_memory(8.0, 0.0, "hold (weights and gradients)");
  const int d = cfg.hidden_size, V = cfg.vocab_size;
  const float std = cfg.initializer_range;
  embed = Embedding(V, d, cfg.seed, 1, std);
  blocks.resize(static_cast<size_t>(cfg.num_hidden_layers));
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    Block& b = blocks[static_cast<size_t>(l)];
    const uint64_t stream = 1000 + 100 * static_cast<uint64_t>(l);
    b.attn_norm = RMSNorm(d, cfg.rms_norm_eps);
    b.ffn_norm = RMSNorm(d, cfg.rms_norm_eps);
    b.attn = Attention(cfg.attention(), cfg.seed, stream, std);
    if (cfg.is_moe_block(l)) {
      b.moe = std::make_unique<MoeLayer>(cfg.moe_layer(l));
    } else if (cfg.is_peer_block(l)) {
      b.peer = std::make_unique<PeerLayer>(cfg.peer_layer(l), init == ParamInit::random);
    } else {
      b.dense = ExpertBank(1, d, cfg.intermediate_size, cfg.seed, stream + 10, std);
      b.dense.bf16 = cfg.moe.precision == "bf16";
    }
  }
  final_norm = RMSNorm(d, cfg.rms_norm_eps);
  if (!cfg.tie_word_embeddings) {
    lm_head = Tensor({V, d});
    dlm_head = Tensor({V, d});
    fill_normal(lm_head.data(), lm_head.numel(), cfg.seed, 2, 0.f, std);
  }
}

std::vector<Param> TransformerLM::params() {
  std::vector<Param> out;
  out.push_back({"model.embed_tokens.weight", &embed.w, &embed.dw});
  for (size_t l = 0; l < blocks.size(); ++l) {
    Block& b = blocks[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", &b.attn_norm.w, &b.attn_norm.dw});
    out.push_back({p + "self_attn.q_proj.weight", &b.attn.wq, &b.attn.dwq});
    out.push_back({p + "self_attn.k_proj.weight", &b.attn.wk, &b.attn.dwk});
    out.push_back({p + "self_attn.v_proj.weight", &b.attn.wv, &b.attn.dwv});
    out.push_back({p + "self_attn.o_proj.weight", &b.attn.wo, &b.attn.dwo});
    out.push_back({p + "post_attention_layernorm.weight", &b.ffn_norm.w, &b.ffn_norm.dw});
    if (b.moe) {
      for (Param& q : b.moe->params()) out.push_back({p + "mlp." + q.name, q.value, q.grad});
    } else if (b.peer) {
      for (Param& q : b.peer->dense_params()) out.push_back({p + "mlp." + q.name, q.value, q.grad});
    } else {
      b.dense.params(out, p + "mlp.");
    }
  }
  out.push_back({"model.norm.weight", &final_norm.w, &final_norm.dw});
  if (!cfg.tie_word_embeddings) out.push_back({"lm_head.weight", &lm_head, &dlm_head});
  return out;
}

std::vector<SparseParam> TransformerLM::sparse_params() {
  std::vector<SparseParam> out;
  for (size_t l = 0; l < blocks.size(); ++l)
    if (blocks[l].peer)
      for (SparseParam& q : blocks[l].peer->sparse_params())
        out.push_back({"model.layers." + std::to_string(l) + ".mlp." + q.name, q.value, q.grad});
  return out;
}

std::vector<std::pair<std::string, Tensor*>> TransformerLM::buffers() {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (size_t l = 0; l < blocks.size(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
    if (blocks[l].moe)
      for (auto& [name, b] : blocks[l].moe->router->buffers()) out.emplace_back(p + "router." + name, b);
    if (blocks[l].peer)
      for (auto& [name, b] : blocks[l].peer->buffers()) out.emplace_back(p + name, b);
  }
  return out;
}

void TransformerLM::zero_grad() {
  for (Param& p : params()) p.grad->zero();
  for (SparseParam& p : sparse_params()) p.grad->clear();
}

void TransformerLM::run(const int32_t* tokens, int B, int L, bool training, uint64_t step) {
  MOE_CHECK(L <= cfg.max_position_embeddings,
            "model: sequence of " + std::to_string(L) + " tokens is longer than max_position_embeddings = " +
                std::to_string(cfg.max_position_embeddings));
  const int T = B * L, d = cfg.hidden_size, V = cfg.vocab_size;
  tokens_ = tokens;
  B_ = B;
  L_ = L;
  stats_ = {};
  Tensor* x = nullptr;
  for (size_t l = 0; l < blocks.size(); ++l) {
    Block& b = blocks[l];
    for (Tensor* t : {&b.x_in, &b.h_attn, &b.x_mid, &b.h_ffn, &b.tmp}) t->resize({T, d});
    if (l == 0) {
      embed.forward(tokens, T, b.x_in.data());
    } else {
      std::memcpy(b.x_in.data(), x->data(), sizeof(float) * T * d);
    }
    b.attn_norm.forward(b.x_in.data(), T, b.h_attn.data());
    b.attn.forward(b.h_attn.data(), B, L, b.tmp.data());
    for (size_t i = 0; i < b.x_mid.numel(); ++i) b.x_mid[i] = b.x_in[i] + b.tmp[i];
    b.ffn_norm.forward(b.x_mid.data(), T, b.h_ffn.data());
    if (b.moe) {
      b.moe->forward(b.h_ffn.data(), T, b.tmp.data(), {training, step, L, tokens, false});
      stats_.aux += b.moe->losses().total();
    } else if (b.peer) {
      b.peer->forward(b.h_ffn.data(), T, b.tmp.data(), training);
    } else {
      b.dense.forward(b.h_ffn.data(), {0, T}, b.tmp.data());
    }
    // The block's output overwrites tmp: x_out of block l = x_mid + ffn.
    for (size_t i = 0; i < b.tmp.numel(); ++i) b.tmp[i] += b.x_mid[i];
    x = &b.tmp;
  }
  x_out = *x;
  h_final.resize({T, d});
  final_norm.forward(x_out.data(), T, h_final.data());
  logits.resize({T, V});
  const float* head = cfg.tie_word_embeddings ? embed.w.data() : lm_head.data();
  sgemm(false, true, T, V, d, 1.f, h_final.data(), d, head, d, 0.f, logits.data(), V);
}

double TransformerLM::forward(const int32_t* tokens, const int32_t* targets, int B, int L, bool training,
                              uint64_t step) {
  run(tokens, B, L, training, step);
  targets_ = targets;
  const int T = B * L, V = cfg.vocab_size;
  dlogits_.resize({T, V});
  bool rewards = false;  // routers trained by reward (reinforce) get −CE of each token
  for (const Block& b : blocks) rewards |= b.moe && b.moe->cfg.router_kind() == RouterKind::reinforce;
  if (rewards && training) {
    reward_.resize({T});
    stats_.ce = cross_entropy(logits.data(), targets, T, V, dlogits_.data(), reward_.data());
    for (int t = 0; t < T; ++t)
      reward_[static_cast<size_t>(t)] = targets[t] == kIgnoreIndex ? std::nanf("") : -reward_[static_cast<size_t>(t)];
    for (Block& b : blocks)
      if (b.moe) {
        stats_.aux -= b.moe->losses().total();
        b.moe->set_reward(reward_.data());
        stats_.aux += b.moe->losses().total();
      }
  } else {
    stats_.ce = cross_entropy(logits.data(), targets, T, V, dlogits_.data());
  }
  return stats_.ce;
}

const Tensor& TransformerLM::forward_logits(const int32_t* tokens, int B, int L) {
  run(tokens, B, L, false, 0);
  targets_ = nullptr;
  return logits;
}

void TransformerLM::reset_cache() {
  caches_.assign(blocks.size(), Attention::Cache{});
}

const float* TransformerLM::decode(const int32_t* tokens, int n) {
  if (caches_.size() != blocks.size()) reset_cache();
  const int d = cfg.hidden_size, V = cfg.vocab_size, maxL = cfg.max_position_embeddings;
  Tensor x({n, d}), h({n, d}), f({n, d});
  embed.forward(tokens, n, x.data());
  for (size_t l = 0; l < blocks.size(); ++l) {
    Block& b = blocks[l];
    b.attn_norm.forward(x.data(), n, h.data());
    b.attn.forward_cached(h.data(), n, caches_[l], maxL, f.data());
    for (size_t i = 0; i < x.numel(); ++i) x[i] += f[i];
    b.ffn_norm.forward(x.data(), n, h.data());
    if (b.moe) {
      b.moe->forward(h.data(), n, f.data(), {false, 0, n, tokens, true});
    } else if (b.peer) {
      b.peer->forward(h.data(), n, f.data(), false);
    } else {
      b.dense.forward(h.data(), {0, n}, f.data());
    }
    for (size_t i = 0; i < x.numel(); ++i) x[i] += f[i];
  }
  h_final.resize({1, d});
  final_norm.forward(x.data() + static_cast<size_t>(n - 1) * d, 1, h_final.data());
  logits.resize({1, V});
  const float* head = cfg.tie_word_embeddings ? embed.w.data() : lm_head.data();
  sgemm(false, true, 1, V, d, 1.f, h_final.data(), d, head, d, 0.f, logits.data(), V);
  return logits.data();
}

void TransformerLM::backward() {
  MOE_CHECK(targets_ != nullptr, "model: backward needs a forward with targets");
  const int T = B_ * L_, d = cfg.hidden_size, V = cfg.vocab_size;
  dx_.resize({T, d});
  dh_.resize({T, d});
  // LM head.
  const float* head = cfg.tie_word_embeddings ? embed.w.data() : lm_head.data();
  float* dhead = cfg.tie_word_embeddings ? embed.dw.data() : dlm_head.data();
  sgemm(true, false, V, d, T, 1.f, dlogits_.data(), V, h_final.data(), d, 1.f, dhead, d);
  sgemm(false, false, T, d, V, 1.f, dlogits_.data(), V, head, d, 0.f, dh_.data(), d);
  final_norm.backward(dh_.data(), dx_.data());  // dx_ = d(objective)/d(block output)
  for (size_t li = blocks.size(); li-- > 0;) {
    Block& b = blocks[li];
    // x_out = x_mid + ffn(norm(x_mid))
    if (b.moe) {
      b.moe->backward(dx_.data(), dh_.data());
    } else if (b.peer) {
      b.peer->backward(dx_.data(), dh_.data());
    } else {
      b.dense.backward(b.h_ffn.data(), dx_.data(), {0, T}, nullptr, dh_.data(), nullptr);
    }
    b.ffn_norm.backward(dh_.data(), b.tmp.data());
    for (size_t i = 0; i < dx_.numel(); ++i) dx_[i] += b.tmp[i];
    // x_mid = x_in + attn(norm(x_in))
    b.attn.backward(dx_.data(), dh_.data());
    b.attn_norm.backward(dh_.data(), b.tmp.data());
    for (size_t i = 0; i < dx_.numel(); ++i) dx_[i] += b.tmp[i];
  }
  embed.backward(tokens_, T, dx_.data());
}

int64_t TransformerLM::num_embedding_params() const {
  const int64_t Vd = static_cast<int64_t>(cfg.vocab_size) * cfg.hidden_size;
  return cfg.tie_word_embeddings ? Vd : 2 * Vd;
}

static int64_t attention_params(const ModelConfig& c) {
  const int64_t d = c.hidden_size, hd = c.attention().hd();
  const int64_t H = c.num_attention_heads, KV = c.attention().kv_heads();
  return d * H * hd * 2 + d * KV * hd * 2;
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
    parts[1].count += attention_params(c) + 2 * c.hidden_size;
    if (c.is_moe_block(l)) parts[2].count += c.moe_layer(l).num_params();
    else if (c.is_peer_block(l)) parts[3].count += c.peer_layer(l).num_params();
    else parts[4].count += 3LL * c.intermediate_size * c.hidden_size;
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

int64_t TransformerLM::num_params() const { return cfg.num_params(); }

int64_t TransformerLM::num_active_params() const {
  int64_t n = num_embedding_params() + cfg.hidden_size;
  for (const Block& b : blocks) {
    n += attention_params(cfg) + 2 * cfg.hidden_size;
    n += b.moe ? b.moe->num_active_params() : b.peer ? b.peer->num_active_params() : 3LL * cfg.intermediate_size * cfg.hidden_size;
  }
  return n;
}

double TransformerLM::flops_per_token() const {
  const double d = cfg.hidden_size, V = cfg.vocab_size, L = cfg.max_position_embeddings;
  double router = 0.0, peer_params = 0.0, peer_flops = 0.0;
  for (const Block& b : blocks) {
    if (b.moe) router += d * b.moe->cfg.n_experts();
    if (b.peer) {
      peer_params += static_cast<double>(b.peer->num_active_params());
      peer_flops += b.peer->flops_per_token();
    }
  }
  const double active_non_embedding = static_cast<double>(num_active_params() - num_embedding_params());
  return 6.0 * (active_non_embedding - router - peer_params) + 14.0 * router + peer_flops + 6.0 * V * d +
         6.0 * cfg.num_hidden_layers * L * d;
}

}  // namespace moe
