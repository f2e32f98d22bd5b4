// transformer.h — the decoder-only language model: token embedding, then per block
//   x ← x + Attention(RMSNorm(x));  x ← x + FFN(RMSNorm(x))
// then a final RMSNorm and the LM head (tied to the embedding optionally), trained with cross-entropy
// plus the FFNs' loss terms. A block's FFN is an Ffn (nn/ffn.h): the dense SwiGLU, the MoE layer or a
// PEER layer, as ModelConfig::ffn_of says. Explicit forward/backward; the model owns every parameter.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/tensor.h"
#include "model/config.h"
#include "nn/attention.h"
#include "nn/embedding.h"
#include "nn/ffn.h"
#include "nn/rmsnorm.h"

namespace moe {

struct ModelStats {
  double ce = 0.0;        // mean cross-entropy of the last forward
  double aux = 0.0;       // sum of the FFNs' loss terms (balance losses, the REINFORCE surrogate)
  double distill = 0.0;   // the distillation term λ·KL(p_teacher ‖ p) (0 without a teacher)
};

// How a model's parameters start: random (for training), or with PEER's expert tables left zero
// because a checkpoint load follows (drawing 2 × N·d normals at N = 1024² takes seconds).
enum class ParamInit { random, for_loading };

// Per block whose FFN has experts: (block, the experts a token went to).
using BlockExperts = std::vector<std::pair<int, std::vector<int32_t>>>;

// The metrics accumulator of one block's FFN (see FfnStats).
struct LayerStats {
  int layer;
  std::unique_ptr<FfnStats> stats;
};

class TransformerLM {
 public:
  explicit TransformerLM(const ModelConfig& c, ParamInit init = ParamInit::random);
  const ModelConfig cfg;

  struct Block {
    RMSNorm attn_norm, ffn_norm;
    Attention attn;
    std::unique_ptr<Ffn> ffn;  // dense SwiGLU, MoE or PEER (ModelConfig::ffn_of)
    Tensor x_in, h_attn, x_mid, h_ffn, tmp;  // (T, d) activations
    // The FFN as its concrete kind, or null (for tests and tools that look inside one kind).
    template <class F>
    F* ffn_as() const {
      return dynamic_cast<F*>(ffn.get());
    }
  };
  Embedding embed;
  std::vector<Block> blocks;
  RMSNorm final_norm;
  Tensor lm_head, dlm_head;  // (V, d), unused when tied
  Tensor x_out, h_final, logits;  // (T, d), (T, d), (T, V)

  // tokens, targets: (B·L); targets may hold kIgnoreIndex. Returns the mean cross-entropy; the
  // objective that backward() differentiates is that plus stats().aux plus stats().distill.
  double forward(const int32_t* tokens, const int32_t* targets, int B, int L, bool training, uint64_t step);
  // Gradients of the last forward's objective, accumulated into every parameter's gradient.
  // block_done(l), when given, is called as soon as block l's parameter gradients are complete (the
  // blocks go from the last to the first; the embedding, final norm and head are complete when
  // backward returns): the trainer starts summing them across ranks while the backward goes on.
  void backward(const std::function<void(size_t)>& block_done = {});
  // Distillation for the following training forwards: teacher (B·L, V) holds the teacher's logits of
  // the same batch (kept alive by the caller), weight λ; null turns it off.
  void set_teacher(const float* teacher, float weight) {
    teacher_ = teacher;
    distill_weight_ = weight;
  }
  // Logits only (T, V) for inference: no targets, eval mode. A distributed model (distribute) takes the
  // same tokens on every rank and gives every rank the logits of one process; only its experts'
  // rows travel (evaluation during expert-parallel training).
  const Tensor& forward_logits(const int32_t* tokens, int B, int L);
  // Incremental inference with KV caches: reset_cache(S) starts S empty sequences; decode feeds n new
  // tokens of sequence `seq` through the blocks and returns the logits (V) of the last one.
  void reset_cache(int sequences = 1);
  const float* decode(const int32_t* tokens, int n, int seq = 0);
  // Several sequences in one pass (batched decoding, or the prompts' prefills together): segment j feeds
  // its n tokens (tokens holds them segment after segment) to sequence seq; returns the logits
  // (segments, V) of each segment's last token. Each weight matrix is read once for all the rows.
  struct DecodeSegment {
    int seq;
    int n;
  };
  const Tensor& decode(const int32_t* tokens, const std::vector<DecodeSegment>& segments);
  int cache_len(int seq = 0) const;
  // Context shift of every block's cache of sequence seq (Attention::shift_cache): positions [keep,
  // keep + discard) go.
  void shift_cache(int keep, int discard, int seq = 0);
  // Generation and evaluation from packed weights (core/packed.h, `--weights`): every block's attention
  // projections and FFN weight matrices and the LM head packed in format f, and the fp32 weights rounded
  // to what the packed copies hold; forward_logits and decode then both multiply by the packed copies
  // (Q8_0 with activations rounded to int8 blocks), so that they run the same model. Embedding rows,
  // norms, routers and PEER's tables stay fp32; a tied head rounds the embedding table it shares. fp32
  // copies nothing: decoding reads the model's own matrices, stacked (W_q over W_k over W_v, W1 over
  // W3), with its own dot products rather than one BLAS matrix-vector product per matrix. For inference only: the packed copies do not
  // follow training.
  void pack_weights(WeightFormat f);
  WeightFormat weight_format() const { return packed_; }  // fp32 also when not packed
  // The KV caches' storage for generation and evaluation (Attention::set_kv_cache): fp32, or bf16 (half
  // the bytes a token reads at long context; forward_logits then rounds every block's keys and values
  // as the cache would). Drops the caches; for inference only.
  void set_kv_cache(Precision p);
  Precision kv_cache() const { return blocks.empty() ? Precision::fp32 : blocks.front().attn.kv_cache(); }
  void zero_grad();
  std::vector<Param> params();               // dense parameters (AdamW)
  std::vector<Param> block_params(size_t l);  // those of block l (a subset of params())
  std::vector<SparseParam> sparse_params();  // tables trained by rows (PEER's experts and sub-keys)
  // Saved state that is not trained: the routers' buffers and PEER's BatchNorm running statistics.
  std::vector<NamedTensor> buffers();
  const ModelStats& stats() const { return stats_; }
  // After each optimizer step: every FFN's after_step (DeepSeek-V3's bias, RL-R's baseline).
  void after_step();
  // Expert and data parallelism over comm (docs/DISTRIBUTED.md), called by every rank right after
  // construction: each FFN keeps its share of the experts (Ffn::distribute); a forward takes this
  // rank's B sequences as sequences [rank·B, (rank+1)·B) of the whole batch of P·B, and its
  // cross-entropy gradient is that of the whole batch's mean (scaled by 1/P), so that the sum of the
  // ranks' gradients is one process's. metrics() gives the whole batch's numbers.
  void distribute(Comm* comm);
  Comm* comm() const { return comm_; }

  // A metrics accumulator per block whose FFN has metrics (MoE, PEER), in block order.
  std::vector<LayerStats> new_stats() const;
  // The FFNs' metrics of the last forward, by kind: {"moe": [{"layer": l, ...}, ...], "peer": [...]}
  // ("moe" always present, empty for a model without MoE layers: metrics.jsonl has always had it).
  // summary, when given, gets one line: "L1 max/mean 1.31 cv 0.12  L2 ...".
  nlohmann::json metrics(std::string* summary = nullptr) const;
  // Per block with experts, the experts token t of the last forward went to: (block, experts).
  BlockExperts experts_of(int t) const;

  int64_t num_params() const;            // all parameters
  int64_t num_active_params() const;     // used by one token
  // The bytes decoding one token reads at least, with `context` positions in the KV cache after it:
  // every active weight outside the token embedding (attention, norms, the router and the experts one
  // token uses, the LM head: all of it) plus the embedding's one row, and each block's cached keys and
  // values (2 bytes each in a bf16 KV cache). The memory-bandwidth bound of decoding is the read bandwidth divided by this.
  double decode_bytes(int context) const;
  int64_t num_embedding_params() const;  // token embedding (+ the untied LM head)
  // Training FLOPs per token, forward + backward (docs/MECHANISMS.md §7, Krajewski Eq. 10): c_f = 6 per
  // active non-embedding weight outside the FFNs, each FFN's own count (Ffn::flops_per_token: c_r = 14
  // per router weight, PEER's retrieval), 6·V·d for the LM head, and 6·layers·L·d for attention over
  // the context (Kaplan et al.).
  double flops_per_token() const;

 private:
  const int32_t* tokens_ = nullptr;
  const int32_t* targets_ = nullptr;
  int B_ = 0, L_ = 0;
  Tensor dlogits_, dx_, dh_, dr_;
  // precision = bf16: the LM head in mixed precision, with the bf16 copies of its input and of dlogits.
  Bf16Linear head_lin_;
  WeightFormat packed_ = WeightFormat::fp32;
  PackedMatrix head_packed_;
  bf16_vector hb_, dlb_;
  Tensor reward_;  // (T) per-token reward −CE for routers trained by reward
  const float* teacher_ = nullptr;  // (T, V) of set_teacher
  float distill_weight_ = 0.f;
  std::vector<std::vector<Attention::Cache>> caches_;  // per sequence, one per block
  ModelStats stats_;
  Comm* comm_ = nullptr;
  // replicated: every rank runs these same tokens (forward_logits of a distributed model).
  void run(const int32_t* tokens, int B, int L, bool training, uint64_t step, bool replicated);
  // logits (rows, V) of h (rows, d) through the LM head: fp32 sgemm, or the packed copy once packed.
  void head_forward(const Tensor& h);
  // The head's (and attention's) GEMMs: bf16 for a bf16 model, unless its weights are packed.
  bool bf16_gemms() const { return cfg.precision() == Precision::bf16 && head_packed_.empty(); }
  void collect_block_params(size_t l, std::vector<Param>& out);
};

}  // namespace moe
