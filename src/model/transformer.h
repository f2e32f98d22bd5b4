// transformer.h — the decoder-only MoE language model: token embedding, then per block
//   x ← x + Attention(RMSNorm(x));  x ← x + FFN(RMSNorm(x))   (FFN: dense SwiGLU or the MoE layer)
// then a final RMSNorm and the LM head (tied to the embedding optionally), trained with cross-entropy
// plus the MoE layers' balance losses. The FFN of a block is a dense SwiGLU, the MoE layer, or a PEER
// layer (ffn = "peer": the listed blocks, by default the middle one, as He 2024; the others dense).
// Explicit forward/backward; the model owns every parameter.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "moe/experts.h"
#include "moe/moe_layer.h"
#include "moe/peer.h"
#include "nn/attention.h"
#include "nn/embedding.h"
#include "nn/rmsnorm.h"

namespace moe {

// Field names follow the Hugging Face configs (Mixtral, DeepSeek-V2, Qwen2-MoE) where they exist.
struct ModelConfig {
  int vocab_size = 4096;
  int hidden_size = 256;
  int num_hidden_layers = 4;
  int num_attention_heads = 4;
  int num_key_value_heads = 0;       // 0: num_attention_heads
  int intermediate_size = 512;       // width of the dense SwiGLU FFN
  int max_position_embeddings = 128; // training sequence length
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  bool tie_word_embeddings = false;
  float initializer_range = 0.02f;
  std::string ffn = "moe";           // moe | dense | peer
  int first_k_dense_replace = 0;     // DeepSeek: the first k blocks keep a dense FFN
  // The blocks whose FFN is the sparse one (ffn = moe or peer); the others are dense. Empty: for moe
  // every block from first_k_dense_replace on, for peer the middle block (num_hidden_layers / 2).
  std::vector<int> sparse_layers;
  // The MoE layer of every MoE block (d_model = hidden_size). Default: Mixtral-style top-2 of 8
  // experts of width 256, as many active FFN parameters as the dense FFN of width 512.
  MoeConfig moe = [] {
    MoeConfig m;
    m.d_ff_expert = 256;
    m.aux_loss_coef = 1e-2f;
    return m;
  }();
  // The PEER layer of every PEER block (d_model, seed, layer_id and init_std are filled in).
  PeerConfig peer = [] {
    PeerConfig p;
    p.n_keys = 128;
    p.d_key = 64;
    return p;
  }();
  uint64_t seed = 1;

  bool is_moe_block(int layer) const { return ffn == "moe" && is_sparse_block(layer); }
  bool is_peer_block(int layer) const { return ffn == "peer" && is_sparse_block(layer); }
  AttentionConfig attention() const;
  MoeConfig moe_layer(int layer) const;  // moe with d_model, seed and layer_id filled in
  PeerConfig peer_layer(int layer) const;
  void validate() const;                 // throws moe::Error naming the field
  int64_t num_params() const;            // every parameter of the model it describes
  // Throws moe::Error, naming the settings that make the model big, when `bytes_per_param` bytes
  // for each parameter plus `other_bytes` exceed this machine's memory (`what`: "train", "load").
  void check_memory(double bytes_per_param, double other_bytes, const std::string& what) const;

 private:
  bool is_sparse_block(int layer) const;
};

struct ModelStats {
  double ce = 0.0;        // mean cross-entropy of the last forward
  double aux = 0.0;       // sum of the MoE layers' loss terms
};

// How a model's parameters start: random (for training), or with PEER's expert tables left zero
// because a checkpoint load follows (drawing 2 × N·d normals at N = 1024² takes seconds).
enum class ParamInit { random, for_loading };

class TransformerLM {
 public:
  explicit TransformerLM(const ModelConfig& c, ParamInit init = ParamInit::random);
  const ModelConfig cfg;

  struct Block {
    RMSNorm attn_norm, ffn_norm;
    Attention attn;
    std::unique_ptr<MoeLayer> moe;    // MoE FFN, or
    std::unique_ptr<PeerLayer> peer;  // PEER FFN, or
    ExpertBank dense;                 // dense SwiGLU FFN (one expert over every token)
    Tensor x_in, h_attn, x_mid, h_ffn, tmp;  // (T, d) activations
  };
  Embedding embed;
  std::vector<Block> blocks;
  RMSNorm final_norm;
  Tensor lm_head, dlm_head;  // (V, d), unused when tied
  Tensor x_out, h_final, logits;  // (T, d), (T, d), (T, V)

  // tokens, targets: (B·L); targets may hold kIgnoreIndex. Returns the mean cross-entropy; the
  // objective that backward() differentiates is that plus stats().aux.
  double forward(const int32_t* tokens, const int32_t* targets, int B, int L, bool training, uint64_t step);
  // Gradients of the last forward's objective, accumulated into every parameter's gradient.
  void backward();
  // Logits only (T, V) for inference: no targets, eval mode.
  const Tensor& forward_logits(const int32_t* tokens, int B, int L);
  // Incremental inference on one sequence: feeds n new tokens through the blocks with each block's KV
  // cache and returns the logits (V) of the last one. reset_cache() starts a new sequence.
  const float* decode(const int32_t* tokens, int n);
  void reset_cache();
  int cache_len() const { return caches_.empty() ? 0 : caches_[0].len; }
  void zero_grad();
  std::vector<Param> params();               // dense parameters (AdamW)
  std::vector<SparseParam> sparse_params();  // tables trained by rows (PEER's experts and sub-keys)
  // Saved state that is not trained: the routers' buffers and PEER's BatchNorm running statistics.
  std::vector<std::pair<std::string, Tensor*>> buffers();
  const ModelStats& stats() const { return stats_; }

  int64_t num_params() const;            // all parameters
  int64_t num_active_params() const;     // used by one token
  int64_t num_embedding_params() const;  // token embedding (+ the untied LM head)
  // Training FLOPs per token, forward + backward (docs/MECHANISMS.md §7, Krajewski Eq. 10): c_f = 6 per active
  // non-embedding weight outside the routers and PEER layers, c_r = 14 per router weight (d·E·G per
  // MoE layer), PeerLayer::flops_per_token() per PEER layer, 6·V·d for the LM head, and
  // 6·layers·L·d for attention over the context (Kaplan et al.).
  double flops_per_token() const;

 private:
  const int32_t* tokens_ = nullptr;
  const int32_t* targets_ = nullptr;
  int B_ = 0, L_ = 0;
  Tensor dlogits_, dx_, dh_;
  Tensor reward_;  // (T) per-token reward −CE for routers trained by reward
  std::vector<Attention::Cache> caches_;  // one per block
  ModelStats stats_;
  void run(const int32_t* tokens, int B, int L, bool training, uint64_t step);
};

}  // namespace moe
