// peer.h — PEER (He 2024, "Mixture of A Million Experts"), docs/MECHANISMS.md §5: retrieval of the best of
// N = n_keys² single-neuron experts by product keys. (The PEER layer itself builds on this.)
//
// A query q ∈ R^{d_k} is split into halves q1, q2; sub-key tables K1, K2 ∈ R^{n_keys × d_k/2} give
// half-scores s1 = q1·K1ᵀ and s2 = q2·K2ᵀ. Expert i1·n_keys + i2 scores s1[i1] + s2[i2]. Its top k
// is found among the k² sums of the top k of s1 and the top k of s2: any expert outside those has k
// candidates that beat it in both halves.
#pragma once
#include <cstdint>

namespace moe {

// The k best experts (best first; ties: lower expert index) of the n_keys² sums s1[i1] + s2[i2], from
// the half-scores s1, s2 (n_keys each); k <= n_keys. Exactly the top k of all n_keys² scores.
void product_key_topk(const float* s1, const float* s2, int n_keys, int k, int32_t* idx, float* score);

}  // namespace moe

#include <string>
#include <vector>

#include "core/tensor.h"

namespace moe {

struct PeerConfig {
  int d_model = 256;
  int n_keys = 1024;             // N = n_keys² experts
  int heads = 8;                 // h
  int top_k = 16;                // experts per head
  int d_key = 128;               // d_k (split in two halves for the product keys)
  bool query_bn = true;          // BatchNorm on the queries
  std::string score = "softmax"; // softmax | sigmoid: the gate over a head's k scores
  std::string activation = "gelu";  // gelu | relu
  float bn_eps = 1e-5f;
  float bn_momentum = 0.1f;      // running = (1 − m)·running + m·batch (unbiased variance), as PyTorch
  float init_std = 0.02f;
  uint64_t seed = 1;
  uint64_t layer_id = 0;

  int64_t n_experts() const { return static_cast<int64_t>(n_keys) * n_keys; }
  int64_t num_params() const;  // every parameter, the full tables included
  // Throws moe::Error naming the field and the fix.
  void validate() const;
};

// Milliseconds in each phase of the last forward and backward.
struct PeerTimings {
  double query = 0, scores = 0, topk = 0, experts = 0;            // forward
  double experts_bwd = 0, rows_bwd = 0, keys_bwd = 0, query_bwd = 0;  // backward
  // Retrieval: the queries, their sub-key scores and product-key top-k, and the backward through them.
  double retrieval() const { return query + scores + topk + keys_bwd + query_bwd; }
};

// The PEER layer: f(x) = Σ_h Σ_{i∈I_h(x)} g_{h,i}(x)·act(u_iᵀx)·v_i, with I_h the product-key top-k
// of the head's query q_h = BN(W_q,h·x). u, v: (N, d); K1, K2: (n_keys, d_k/2), shared by the heads.
class PeerLayer {
 public:
  // init_tables = false leaves u and v zero (a checkpoint load follows).
  explicit PeerLayer(const PeerConfig& c, bool init_tables = true);
  const PeerConfig cfg;
  Tensor wq, dwq;              // (h·d_k, d)
  Tensor bn_gamma, dbn_gamma;  // (h·d_k)
  Tensor bn_beta, dbn_beta;    // (h·d_k)
  Tensor running_mean, running_var;  // (h·d_k) buffers
  Tensor k1, k2;               // (n_keys, d_k/2)
  Tensor u, v;                 // (N, d)
  SparseRows dk1, dk2, du, dv; // gradients of the rows touched by the last backward

  void forward(const float* x, int T, float* y, bool training);
  // dy (T, d) → dx (T, d) (overwritten); every gradient accumulates (the sparse ones by row union).
  void backward(const float* dy, float* dx);
  void zero_grad();
  // The dense parameters (W_q and the BN affine), for a dense optimizer.
  std::vector<Param> dense_params();
  // The tables trained by rows: the sub-keys and the experts' u and v.
  std::vector<SparseParam> sparse_params();
  // State that is not trained but saved: BatchNorm's running statistics (empty without query_bn).
  std::vector<std::pair<std::string, Tensor*>> buffers();
  int64_t num_params() const;         // every parameter, the full tables included
  int64_t num_active_params() const;  // used by one token: W_q, BN, the h·k experts' u and v, and the sub-keys
  // Training FLOPs per token, forward + backward (a multiply-add is 2): the queries (×3), the sub-key
  // scores of every head (forward only: their gradient reaches only the k retrieved pairs), the k²
  // candidate sums, the retrieved pairs' key gradients, and the h·k experts (×3).
  double flops_per_token() const;

  // Of the last forward: (T, h, k) expert ids and gates.
  const std::vector<int32_t>& experts() const { return idx_; }
  const std::vector<float>& gates() const { return gate_; }
  const std::vector<float>& preactivations() const { return pre_; }  // (T, h, k) u_eᵀx
  const PeerTimings& timings() const { return timings_; }

 private:
  const float* x_ = nullptr;
  int T_ = 0;
  bool training_ = false;
  Tensor q_raw_, q_;                  // (T, h·d_k) before and after BN
  Tensor bn_mean_, bn_rstd_;          // (h·d_k) batch statistics of the last training forward
  std::vector<int32_t> idx_;          // (T, h, k)
  std::vector<float> score_, gate_;   // (T, h, k)
  std::vector<float> pre_;            // (T, h, k) u_eᵀx
  PeerTimings timings_;
  // For each token t (in parallel): zeroes row t of out (T, d), then calls f(t, p, u_e, v_e, out_t)
  // for its h·k pairs p in order, e the pair's expert, prefetching the rows two pairs ahead.
  template <class F>
  void over_pairs(int T, float* out, F&& f) const;
};

}  // namespace moe
