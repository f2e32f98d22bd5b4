// attention.h — causal multi-head self-attention with rotary position embeddings (RoPE, the
// Hugging Face "rotate_half" convention) and grouped-query attention (num_key_value_heads divides
// num_attention_heads), with the options real checkpoints use: q/k/v biases (Qwen2), QK-norm per head
// (Qwen3) or over the whole projection (OLMoE), and a fixed score scale (GraniteMoE).
//
//   q = x·Wqᵀ + b_q (T, H·hd), k = x·Wkᵀ + b_k, v = x·Wvᵀ + b_v (T, KV·hd)
//   q, k ← RMSNorm(q), RMSNorm(k)  (qk_norm: head = each head's hd values, full = the whole row)
//   q, k ← RoPE(position in sequence)
//   per sequence b and head h: P = softmax_causal(s·q·kᵀ), o = P·v;  y = o·Woᵀ (T, d)
//   with s = attention_multiplier, or 1/√hd when that is 0
//
// The batch is B sequences of L tokens, stored (B·L, ·) row-major.
#pragma once
#include <array>
#include <vector>

#include "core/bf16.h"
#include "core/enum_names.h"
#include "core/packed.h"
#include "core/tensor.h"
#include "nn/rmsnorm.h"

namespace moe {

// Where QK-norm normalises: nowhere, over each head's hd values (Qwen3-MoE), or over the whole
// projection of H·hd (or KV·hd) values (OLMoE).
enum class QkNorm { none, head, full };
template <>
struct EnumNames<QkNorm> {
  static constexpr const char* what = "QK-norm";
  static constexpr std::array<const char*, 3> names = {"none", "head", "full"};
};

struct AttentionConfig {
  int hidden_size = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;   // 0: num_attention_heads (plain multi-head)
  int head_dim = 0;     // 0: hidden_size / num_attention_heads
  float rope_theta = 10000.f;
  bool bias = false;                // q/k/v projections with biases (Qwen2)
  QkNorm qk_norm = QkNorm::none;
  float norm_eps = 1e-5f;           // QK-norm's RMSNorm epsilon
  float attention_multiplier = 0.f; // score scale s; 0: 1/√hd
  // The projections' GEMMs in mixed precision (bf16 inputs, fp32 accumulation) for batches
  // (training, evaluation); decoding one token at a time with the cache stays fp32.
  bool bf16 = false;

  int kv_heads() const { return num_key_value_heads > 0 ? num_key_value_heads : num_attention_heads; }
  int hd() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  float scale() const;
  int64_t num_params() const;       // W_q, W_k, W_v, W_o and the biases and QK-norm weights
  void validate() const;  // throws moe::Error naming the field
};

struct Attention {
  AttentionConfig cfg;
  Tensor wq, dwq;  // (H·hd, d)
  Tensor wk, dwk;  // (KV·hd, d)
  Tensor wv, dwv;  // (KV·hd, d)
  Tensor wo, dwo;  // (d, H·hd)
  Tensor bq, dbq, bk, dbk, bv, dbv;  // (H·hd), (KV·hd), (KV·hd) when cfg.bias
  RMSNorm q_norm, k_norm;            // (hd) or (H·hd), (KV·hd) when cfg.qk_norm
  // Activations of the last forward.
  Tensor q, k, v;  // (T, H·hd), (T, KV·hd), (T, KV·hd); q and k after RoPE
  Tensor q_pre, k_pre;  // q and k before QK-norm (with qk_norm)
  Tensor lse;      // (B, H, L) each query row's log Σ exp of its scaled scores (nn/attention_core.h)
  Tensor o;        // (T, H·hd) per-head outputs, concatenated

  // Keys and values of the positions seen so far, for generation one token at a time. Each key-value
  // head's positions lie contiguous, (KV, cap, hd): decoding reads one head's keys and values as two
  // dense (len, hd) matrices, not hd of every KV·hd values of each position. In fp32 (k, v) or, after
  // set_kv_cache(Precision::bf16), in bf16 (kb, vb): half the bytes a token reads at long context.
  struct Cache {
    Tensor k, v;         // fp32: (KV, cap, hd), keys after RoPE
    bf16_vector kb, vb;  // bf16: the same layout
    int len = 0;         // positions filled
    int cap = 0, hd = 0; // positions each head has room for; head width
    size_t at(int g, int pos) const { return (static_cast<size_t>(g) * cap + static_cast<size_t>(pos)) * hd; }
  };

  Attention() = default;
  Attention(const AttentionConfig& c, uint64_t seed, uint64_t stream, float init_std);
  void forward(const float* x, int B, int L, float* y);  // x must stay valid until backward
  void backward(const float* dy, float* dx);             // dx overwritten; weight gradients accumulate
  // Inference on one sequence with a KV cache: n new tokens x (n, d) at positions cache.len ...
  // attend to the cached positions and to each other (causally); appends their keys and values.
  void forward_cached(const float* x, int n, Cache& cache, int max_len, float* y);
  // Several sequences at once (batched decoding): x holds each segment's n new rows in turn, each
  // segment with its own cache; one projection for all the rows, attention per segment.
  struct Segment {
    Cache* cache;
    int n;
  };
  void forward_cached(const float* x, const std::vector<Segment>& segments, int max_len, float* y);
  // A rolling cache (context shift): drops positions [keep, keep + discard) of the cache; the later ones
  // move down by `discard`, their keys rotated back by as many positions. RoPE makes a score depend on
  // the difference of positions only, so each key then sits at its new position exactly; what changes
  // is that the moved keys and values of later blocks were computed with the dropped tokens in view.
  void shift_cache(Cache& cache, int keep, int discard);
  // Decoding from packed weights (core/packed.h): W_q, W_k, W_v and W_o packed in format f and rounded
  // to what they hold; forward_cached reads the packed copies, forward the rounded fp32 weights (bf16
  // mode off). Not for training: the packed copies do not follow the weights.
  void pack(WeightFormat f);
  // The KV cache's storage from the next cache on (inference, like pack): fp32, or bf16 (keys and values
  // rounded to bf16; forward then rounds k and v as well, so that evaluation runs the model that decodes).
  void set_kv_cache(Precision p) { kv_ = p; }
  Precision kv_cache() const { return kv_; }
  size_t packed_bytes() const;  // the four packed matrices (0 when not packed)
  // The FLOPs of the scores and their products with the values in one forward, as computed: causal
  // blocks of rows against the keys up to each block's end (a little more than the causal half). The
  // backward computes 2.5 times as many (the scores again, then four products).
  double core_flops(int B, int L) const;

 private:
  const float* x_ = nullptr;
  int B_ = 0, L_ = 0;
  Tensor cos_, sin_;             // (L, hd/2) rotation tables
  Tensor dq_, dk_, dv_, do_;     // backward scratch
  Tensor dq_pre_, dk_pre_;
  // bf16 mode: the projections, and the bf16 copies of their inputs and output gradients.
  Bf16Linear lq_, lk_, lv_, lo_;
  bf16_vector xb_, ob_, dyb_, dqb_, dkb_, dvb_;
  PackedMatrix pqkv_, po_;  // pack(): W_q over W_k over W_v, and W_o
  Precision kv_ = Precision::fp32;
  // cos and sin of at least L positions; with cap, grown by doubling up to cap (generation one token at a time).
  void rope_tables(int L, int cap = 0);
  // q, k, v of n rows of x into the given buffers, biases and QK-norm applied, not yet rotated;
  // qpre, kpre (n, H·hd), (n, KV·hd) keep q and k before QK-norm (the norms read them in backward).
  // The GEMMs in fp32, in mixed precision (x's bf16 copy kept in xb_ for the backward), or with the
  // packed weights.
  enum class Gemms { fp32, bf16, packed };
  void project(const float* x, int n, float* qo, float* ko, float* vo, Tensor& qpre, Tensor& kpre, Gemms how);
};

// Rotate n rows of `heads` heads of width hd (row stride `stride`) by the tables; row r is at position
// pos0 + r % seq_len. inverse = true applies the transposed rotation (the backward of the forward one).
void rope_apply(float* x, int n, int heads, int hd, int stride, const Tensor& cos_t, const Tensor& sin_t,
                bool inverse, int seq_len, int pos0 = 0);

}  // namespace moe
