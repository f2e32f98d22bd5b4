#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "core/rng.h"
#include "model/dense_ffn.h"
#include "moe/moe_layer.h"
#include "nn/cross_entropy.h"
#include "peer/peer_layer.h"

namespace moe {

namespace {

// The passes over a whole (T, d) activation, on all threads (one would take 0.2-0.3 ms a pass).
constexpr size_t kPassChunk = 1 << 14;

// out = a + s·b over n values (out may alias a or b): the residual stream's adds.
void add_scaled_into(float* out, const float* a, float s, const float* b, size_t n) {
  parallel_for_simd(n, kPassChunk, [=](size_t i) { out[i] = a[i] + s * b[i]; });
}

std::unique_ptr<Ffn> make_ffn(const ModelConfig& c, int layer) {
  switch (c.ffn_of(layer)) {
    case FfnKind::moe: return std::make_unique<MoeLayer>(c.moe_layer(layer));
    case FfnKind::peer: return std::make_unique<PeerLayer>(c.peer_layer(layer));
    case FfnKind::dense: break;
  }
  const uint64_t stream = 1000 + 100 * static_cast<uint64_t>(layer) + 10;
  return std::make_unique<DenseFfn>(c.hidden_size, c.intermediate_size, c.seed, stream, c.initializer_range,
                                    c.moe.precision == Precision::bf16);
}

// t ← s·t (nothing to do at s = 1, the usual case).
void scale_in_place(Tensor& t, float s) {
  if (s == 1.f) return;
  float* p = t.data();
  parallel_for_simd(t.numel(), kPassChunk, [=](size_t i) { p[i] *= s; });
}

}  // namespace

TransformerLM::TransformerLM(const ModelConfig& c, ParamInit init) : cfg(c) {
  cfg.validate();
  // A model built for loading takes fresh zero pages (core/tensor.h): its gradient buffers cost no
  // memory until a backward writes them, so one loaded to run needs its weights' memory; one built to
  // train, weights and gradients.
  std::optional<Tensor::FreshPages> fresh;
  std::optional<SkipParamInit> no_draws;  // the load overwrites every weight
  if (init == ParamInit::for_loading) {
    fresh.emplace();
    no_draws.emplace();
    cfg.check_memory(4.0, 0.0, "hold (weights)");
  } else {
    cfg.check_memory(8.0, 0.0, "hold (weights and gradients)");
  }
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
    b.ffn = make_ffn(cfg, l);
  }
  final_norm = RMSNorm(d, cfg.rms_norm_eps);
  if (!cfg.tie_word_embeddings) {
    lm_head = Tensor({V, d});
    dlm_head = Tensor({V, d});
    init_normal(lm_head.data(), lm_head.numel(), cfg.seed, 2, 0.f, std);
  }
}

std::vector<Param> TransformerLM::params() {
  std::vector<Param> out;
  out.push_back({"model.embed_tokens.weight", &embed.w, &embed.dw});
  for (size_t l = 0; l < blocks.size(); ++l) collect_block_params(l, out);
  out.push_back({"model.norm.weight", &final_norm.w, &final_norm.dw});
  if (!cfg.tie_word_embeddings) out.push_back({"lm_head.weight", &lm_head, &dlm_head});
  return out;
}

std::vector<Param> TransformerLM::block_params(size_t l) {
  std::vector<Param> out;
  collect_block_params(l, out);
  return out;
}

void TransformerLM::collect_block_params(size_t l, std::vector<Param>& out) {
  Block& b = blocks[l];
  const std::string p = "model.layers." + std::to_string(l) + ".";
  out.push_back({p + "input_layernorm.weight", &b.attn_norm.w, &b.attn_norm.dw});
  out.push_back({p + "self_attn.q_proj.weight", &b.attn.wq, &b.attn.dwq});
  out.push_back({p + "self_attn.k_proj.weight", &b.attn.wk, &b.attn.dwk});
  out.push_back({p + "self_attn.v_proj.weight", &b.attn.wv, &b.attn.dwv});
  out.push_back({p + "self_attn.o_proj.weight", &b.attn.wo, &b.attn.dwo});
  if (cfg.attention_bias) {
    out.push_back({p + "self_attn.q_proj.bias", &b.attn.bq, &b.attn.dbq});
    out.push_back({p + "self_attn.k_proj.bias", &b.attn.bk, &b.attn.dbk});
    out.push_back({p + "self_attn.v_proj.bias", &b.attn.bv, &b.attn.dbv});
  }
  if (cfg.qk_norm != QkNorm::none) {
    out.push_back({p + "self_attn.q_norm.weight", &b.attn.q_norm.w, &b.attn.q_norm.dw});
    out.push_back({p + "self_attn.k_norm.weight", &b.attn.k_norm.w, &b.attn.k_norm.dw});
  }
  out.push_back({p + "post_attention_layernorm.weight", &b.ffn_norm.w, &b.ffn_norm.dw});
  b.ffn->collect_params(out, p + "mlp.");
}

static std::string mlp_prefix(size_t layer) { return "model.layers." + std::to_string(layer) + ".mlp."; }

std::vector<SparseParam> TransformerLM::sparse_params() {
  std::vector<SparseParam> out;
  for (size_t l = 0; l < blocks.size(); ++l) blocks[l].ffn->collect_sparse_params(out, mlp_prefix(l));
  return out;
}

std::vector<NamedTensor> TransformerLM::buffers() {
  std::vector<NamedTensor> out;
  for (size_t l = 0; l < blocks.size(); ++l) blocks[l].ffn->collect_buffers(out, mlp_prefix(l));
  return out;
}

void TransformerLM::after_step() {
  for (Block& b : blocks) b.ffn->after_step();
}

std::vector<LayerStats> TransformerLM::new_stats() const {
  std::vector<LayerStats> out;
  for (size_t l = 0; l < blocks.size(); ++l)
    if (std::unique_ptr<FfnStats> s = blocks[l].ffn->new_stats()) out.push_back({static_cast<int>(l), std::move(s)});
  return out;
}

void TransformerLM::distribute(Comm* comm) {
  if (!distributed(comm)) return;
  comm_ = comm;
  for (Block& b : blocks) b.ffn->distribute(comm);
}

nlohmann::json TransformerLM::metrics(std::string* summary) const {
  nlohmann::json out = {{"moe", nlohmann::json::array()}};
  for (LayerStats& ls : new_stats()) {
    ls.stats->add();
    if (distributed(comm_)) ls.stats->reduce(*comm_);
    nlohmann::json j = {{"layer", ls.layer}};
    j.update(ls.stats->to_json());
    out[ls.stats->group()].push_back(j);
    if (summary) summary->append("L").append(std::to_string(ls.layer)).append(" ").append(ls.stats->summary()).append("  ");
  }
  return out;
}

BlockExperts TransformerLM::experts_of(int t) const {
  BlockExperts out;
  for (size_t l = 0; l < blocks.size(); ++l)
    if (auto e = blocks[l].ffn->experts_of(t)) out.emplace_back(static_cast<int>(l), std::move(*e));
  return out;
}

void TransformerLM::zero_grad() {
  // In chunks over all the gradients, on every thread: one thread's memset gets about half the
  // machine's write bandwidth.
  constexpr size_t kChunk = size_t{1} << 16;
  std::vector<std::pair<float*, size_t>> chunks;
  for (Param& p : params())
    for (size_t at = 0, n = p.grad->numel(); at < n; at += kChunk)
      chunks.emplace_back(p.grad->data() + at, std::min(kChunk, n - at));
  parallel_for(chunks.size(), [&](size_t i) { std::memset(chunks[i].first, 0, sizeof(float) * chunks[i].second); }, 2);
  for (SparseParam& p : sparse_params()) p.grad->clear();
}

void TransformerLM::run(const int32_t* tokens, int B, int L, bool training, uint64_t step, bool replicated) {
  MOE_CHECK(L <= cfg.context(), "model: sequence of " + std::to_string(L) + " tokens is longer than the context of " +
                                     std::to_string(cfg.context()) + " (model.context_length)");
  const int T = B * L, d = cfg.hidden_size, V = cfg.vocab_size;
  tokens_ = tokens;
  B_ = B;
  L_ = L;
  stats_ = {};
  Tensor* x = nullptr;
  for (size_t l = 0; l < blocks.size(); ++l) {
    Block& b = blocks[l];
    for (Tensor* t : {&b.x_in, &b.h_attn, &b.x_mid, &b.h_ffn, &b.tmp}) t->resize({T, d});
    PhaseTimer residual("fwd: embedding, residuals");
    if (l == 0) {
      embed.forward(tokens, T, b.x_in.data());
      scale_in_place(b.x_in, cfg.embedding_multiplier);
    } else {
      std::memcpy(b.x_in.data(), x->data(), sizeof(float) * T * d);
    }
    {
      PhaseTimer pt("fwd: rmsnorm");
      b.attn_norm.forward(b.x_in.data(), T, b.h_attn.data());
    }
    b.attn.forward(b.h_attn.data(), B, L, b.tmp.data());
    const float rm = cfg.residual_multiplier;
    add_scaled_into(b.x_mid.data(), b.x_in.data(), rm, b.tmp.data(), b.x_mid.numel());
    {
      PhaseTimer pt("fwd: rmsnorm");
      b.ffn_norm.forward(b.x_mid.data(), T, b.h_ffn.data());
    }
    const int64_t token0 = comm_ && !replicated ? static_cast<int64_t>(comm_->rank()) * T : 0;
    {
      PhaseTimer pt("fwd: ffn");  // a MoE layer's own phases are its children
      b.ffn->forward(b.h_ffn.data(), T, b.tmp.data(), {training, step, L, tokens, false, token0, replicated});
    }
    stats_.aux += b.ffn->loss();
    // The block's output overwrites tmp: x_out of block l = x_mid + ffn.
    add_scaled_into(b.tmp.data(), b.x_mid.data(), rm, b.tmp.data(), b.tmp.numel());
    x = &b.tmp;
  }
  PhaseTimer norm("fwd: rmsnorm");
  x_out = *x;
  h_final.resize({T, d});
  final_norm.forward(x_out.data(), T, h_final.data());
  norm.stop();
  logits.resize({T, V});
  const float* head = cfg.tie_word_embeddings ? embed.w.data() : lm_head.data();
  PhaseTimer pt("fwd: lm head", 2.0 * T * static_cast<double>(V) * d);
  if (bf16_gemms()) {
    to_bf16(h_final.data(), hb_, h_final.numel());
    head_lin_.forward(hb_.data(), T, d, head, V, logits.data());
    scale_in_place(logits, 1.f / cfg.logits_scaling);
  } else {
    head_forward(h_final);
  }
}

void TransformerLM::head_forward(const Tensor& h) {
  const int d = cfg.hidden_size, V = cfg.vocab_size, rows = static_cast<int>(h.dim(0));
  logits.resize({rows, V});
  if (head_packed_.empty()) {
    const float* head = cfg.tie_word_embeddings ? embed.w.data() : lm_head.data();
    sgemm(false, true, rows, V, d, 1.f / cfg.logits_scaling, h.data(), d, head, d, 0.f, logits.data(), V);
  } else {  // packed for inference: the products decoding computes (core/packed.h)
    head_packed_.matmul(h.data(), rows, logits.data(), V);
    scale_in_place(logits, 1.f / cfg.logits_scaling);
  }
}

double TransformerLM::forward(const int32_t* tokens, const int32_t* targets, int B, int L, bool training,
                              uint64_t step) {
  run(tokens, B, L, training, step, false);
  PhaseTimer pt("fwd: cross-entropy");
  targets_ = targets;
  const int T = B * L, V = cfg.vocab_size;
  dlogits_.resize({T, V});
  bool rewards = false;  // FFNs trained by reward (RL-R routers) get −CE of each token
  for (const Block& b : blocks) rewards |= b.ffn->wants_reward();
  if (rewards && training) {
    reward_.resize({T});
    stats_.ce = cross_entropy(logits.data(), targets, T, V, dlogits_.data(), reward_.data());
    for (int t = 0; t < T; ++t)
      reward_[static_cast<size_t>(t)] = targets[t] == kIgnoreIndex ? std::nanf("") : -reward_[static_cast<size_t>(t)];
    for (Block& b : blocks)
      if (b.ffn->wants_reward()) {
        stats_.aux -= b.ffn->loss();
        b.ffn->set_reward(reward_.data());
        stats_.aux += b.ffn->loss();
      }
  } else {
    stats_.ce = cross_entropy(logits.data(), targets, T, V, dlogits_.data());
  }
  if (teacher_ && training)
    stats_.distill = distill_kl(logits.data(), teacher_, targets, T, V, distill_weight_, dlogits_.data());
  if (distributed(comm_)) {  // the gradient of the whole batch's mean: this rank's share is 1/P of it
    const float share = 1.f / static_cast<float>(comm_->size());
    parallel_for(dlogits_.numel(), [&](size_t i) { dlogits_[i] *= share; });
  }
  return stats_.ce;
}

const Tensor& TransformerLM::forward_logits(const int32_t* tokens, int B, int L) {
  run(tokens, B, L, false, 0, comm_ != nullptr);
  targets_ = nullptr;
  return logits;
}

void TransformerLM::reset_cache(int sequences) {
  MOE_CHECK(sequences >= 1, "model: decoding needs at least one sequence");
  caches_.assign(static_cast<size_t>(sequences), std::vector<Attention::Cache>(blocks.size()));
}

int TransformerLM::cache_len(int seq) const {
  return static_cast<size_t>(seq) < caches_.size() && !blocks.empty() ? caches_[static_cast<size_t>(seq)][0].len : 0;
}

void TransformerLM::shift_cache(int keep, int discard, int seq) {
  for (size_t l = 0; l < blocks.size(); ++l) blocks[l].attn.shift_cache(caches_.at(static_cast<size_t>(seq))[l], keep, discard);
}

const float* TransformerLM::decode(const int32_t* tokens, int n, int seq) {
  if (caches_.empty()) reset_cache();
  return decode(tokens, {{seq, n}}).data();
}

const Tensor& TransformerLM::decode(const int32_t* tokens, const std::vector<DecodeSegment>& segments) {
  const int d = cfg.hidden_size, maxL = cfg.context(), S = static_cast<int>(segments.size());
  const float rm = cfg.residual_multiplier;
  int n = 0;
  for (const DecodeSegment& s : segments) {
    MOE_CHECK(s.seq >= 0 && static_cast<size_t>(s.seq) < caches_.size(), "model: decode of a sequence without a cache (reset_cache)");
    n += s.n;
  }
  Tensor x({n, d}), h({n, d}), f({n, d});
  embed.forward(tokens, n, x.data());
  scale_in_place(x, cfg.embedding_multiplier);
  std::vector<Attention::Segment> at(segments.size());
  for (size_t l = 0; l < blocks.size(); ++l) {
    Block& b = blocks[l];
    for (size_t j = 0; j < segments.size(); ++j) at[j] = {&caches_[static_cast<size_t>(segments[j].seq)][l], segments[j].n};
    b.attn_norm.forward(x.data(), n, h.data());
    b.attn.forward_cached(h.data(), at, maxL, f.data());
    for (size_t i = 0; i < x.numel(); ++i) x[i] += rm * f[i];
    b.ffn_norm.forward(x.data(), n, h.data());
    b.ffn->forward(h.data(), n, f.data(), {false, 0, n, tokens, true});
    for (size_t i = 0; i < x.numel(); ++i) x[i] += rm * f[i];
  }
  // The logits of each segment's last token.
  h_final.resize({S, d});
  int end = 0;
  for (int j = 0; j < S; ++j) {
    end += segments[static_cast<size_t>(j)].n;
    final_norm.forward(x.data() + static_cast<size_t>(end - 1) * d, 1, h_final.data() + static_cast<size_t>(j) * d);
  }
  head_forward(h_final);
  return logits;
}

void TransformerLM::set_kv_cache(Precision p) {
  for (Block& b : blocks) b.attn.set_kv_cache(p);
  caches_.clear();
}

void TransformerLM::pack_weights(WeightFormat f) {
  MOE_CHECK(head_packed_.empty(), "model: weights are packed once");
  for (Block& b : blocks) {
    b.attn.pack(f);
    b.ffn->pack_weights(f);
  }
  float* head = cfg.tie_word_embeddings ? embed.w.data() : lm_head.data();
  pack_and_round(head, cfg.vocab_size, cfg.hidden_size, f, head_packed_);
  packed_ = f;
}

void TransformerLM::backward(const std::function<void(size_t)>& block_done) {
  MOE_CHECK(targets_ != nullptr, "model: backward needs a forward with targets");
  const int T = B_ * L_, d = cfg.hidden_size, V = cfg.vocab_size;
  dx_.resize({T, d});
  dh_.resize({T, d});
  // LM head.
  const float* head = cfg.tie_word_embeddings ? embed.w.data() : lm_head.data();
  float* dhead = cfg.tie_word_embeddings ? embed.dw.data() : dlm_head.data();
  const float ls = 1.f / cfg.logits_scaling, rm = cfg.residual_multiplier;
  PhaseTimer head_t("bwd: lm head", 4.0 * T * static_cast<double>(V) * d);
  if (bf16_gemms()) {  // the forward's bf16 copies of the head and of its input
    scale_in_place(dlogits_, ls);
    to_bf16(dlogits_.data(), dlb_, dlogits_.numel());
    head_lin_.backward(dlb_.data(), hb_.data(), T, d, V, dhead, dh_.data());
  } else {
    sgemm(true, false, V, d, T, ls, dlogits_.data(), V, h_final.data(), d, 1.f, dhead, d);
    sgemm(false, false, T, d, V, ls, dlogits_.data(), V, head, d, 0.f, dh_.data(), d);
  }
  head_t.stop();
  {
    PhaseTimer pt("bwd: rmsnorm");
    final_norm.backward(dh_.data(), dx_.data());  // dx_ = d(objective)/d(block output)
  }
  // The gradient reaching a residual branch, m_r·dx (dx itself at m_r = 1).
  auto branch_grad = [&]() -> const float* {
    if (rm == 1.f) return dx_.data();
    dr_.resize({T, d});
    float* dr = dr_.data();
    const float* dx = dx_.data();
    parallel_for_simd(dx_.numel(), kPassChunk, [=](size_t i) { dr[i] = rm * dx[i]; });
    return dr_.data();
  };
  for (size_t li = blocks.size(); li-- > 0;) {
    Block& b = blocks[li];
    PhaseTimer residual("bwd: embedding, residuals");
    // x_out = x_mid + m_r·ffn(norm(x_mid))
    {
      PhaseTimer pt("bwd: ffn");
      b.ffn->backward(branch_grad(), dh_.data());
    }
    {
      PhaseTimer pt("bwd: rmsnorm");
      b.ffn_norm.backward(dh_.data(), b.tmp.data());
    }
    add_scaled_into(dx_.data(), dx_.data(), 1.f, b.tmp.data(), dx_.numel());
    // x_mid = x_in + m_r·attn(norm(x_in))
    b.attn.backward(branch_grad(), dh_.data());
    {
      PhaseTimer pt("bwd: rmsnorm");
      b.attn_norm.backward(dh_.data(), b.tmp.data());
    }
    add_scaled_into(dx_.data(), dx_.data(), 1.f, b.tmp.data(), dx_.numel());
    residual.stop();
    if (block_done) block_done(li);
  }
  PhaseTimer pt("bwd: embedding, residuals");
  scale_in_place(dx_, cfg.embedding_multiplier);
  embed.backward(tokens_, T, dx_.data());
}

int64_t TransformerLM::num_embedding_params() const {
  const int64_t Vd = static_cast<int64_t>(cfg.vocab_size) * cfg.hidden_size;
  return cfg.tie_word_embeddings ? Vd : 2 * Vd;
}

int64_t TransformerLM::num_params() const { return cfg.num_params(); }

int64_t TransformerLM::num_active_params() const {
  int64_t n = num_embedding_params() + cfg.hidden_size;
  for (const Block& b : blocks) n += cfg.attention_params() + 2 * cfg.hidden_size + b.ffn->num_active_params();
  return n;
}

double TransformerLM::decode_bytes(int context) const {
  const int64_t d = cfg.hidden_size, Vd = static_cast<int64_t>(cfg.vocab_size) * d;
  // num_active_params counts the embedding table whole (and the untied head); a token reads one row of it.
  const int64_t weights = num_active_params() - (cfg.tie_word_embeddings ? 0 : Vd) + (cfg.tie_word_embeddings ? 0 : d);
  const double kv = 2.0 * cfg.num_hidden_layers * static_cast<double>(context) * cfg.attention().kv_heads() * cfg.attention().hd();
  // Packed weights: the attention projections, the FFNs' matrices and the head at their packed size.
  int64_t packed = 0;
  double packed_bytes = static_cast<double>(head_packed_.bytes());
  if (!head_packed_.empty()) packed += Vd;
  for (const Block& b : blocks) {
    const size_t attn = b.attn.packed_bytes();
    if (attn > 0) packed += static_cast<int64_t>(b.attn.wq.numel() + b.attn.wk.numel() + b.attn.wv.numel() + b.attn.wo.numel());
    packed_bytes += static_cast<double>(attn) + b.ffn->packed_active_bytes();
    packed += b.ffn->packed_active_params();
  }
  const double kv_bytes = kv * (kv_cache() == Precision::bf16 ? sizeof(bf16_t) : sizeof(float));
  return sizeof(float) * static_cast<double>(weights - packed) + kv_bytes + packed_bytes;
}

double TransformerLM::flops_per_token() const {
  const double d = cfg.hidden_size, V = cfg.vocab_size, L = cfg.max_position_embeddings;
  // Every term is a whole number far below 2^53, so the sum is exact in any order.
  double outside_ffn = static_cast<double>(cfg.hidden_size), ffn = 0.0;  // the final norm
  for (const Block& b : blocks) {
    outside_ffn += static_cast<double>(cfg.attention_params() + 2 * cfg.hidden_size);
    ffn += b.ffn->flops_per_token();
  }
  return 6.0 * outside_ffn + ffn + 6.0 * V * d + 6.0 * cfg.num_hidden_layers * L * d;
}

}  // namespace moe
