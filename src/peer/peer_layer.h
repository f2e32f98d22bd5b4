// peer_layer.h — the PEER layer (He 2024, docs/MECHANISMS.md §5), an Ffn (nn/ffn.h): per head, a
// BatchNorm'd query retrieves the best k of N = n_keys² single-neuron experts by product keys
// (product_keys.h); the experts' tables u, v and the sub-keys K1, K2 are trained by rows (lazy Adam).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/ffn.h"
#include "peer/config.h"

namespace moe {

// Milliseconds in each phase of the last forward and backward.
struct PeerTimings {
  double query = 0, scores = 0, topk = 0, experts = 0;            // forward
  double experts_bwd = 0, rows_bwd = 0, keys_bwd = 0, query_bwd = 0;  // backward
  // Retrieval: the queries, their sub-key scores and product-key top-k, and the backward through them.
  double retrieval() const { return query + scores + topk + keys_bwd + query_bwd; }
};

// The PEER layer: f(x) = Σ_h Σ_{i∈I_h(x)} g_{h,i}(x)·act(u_iᵀx)·v_i, with I_h the product-key top-k
// of the head's query q_h = BN(W_q,h·x). u, v: (N, d); K1, K2: (n_keys, d_k/2), shared by the heads.
class PeerLayer : public Ffn {
 public:
  // The tables are drawn at random unless a SkipParamInit is alive (core/rng.h: a checkpoint load follows).
  explicit PeerLayer(const PeerConfig& c);
  const PeerConfig cfg;
  Tensor wq, dwq;              // (h·d_k, d)
  Tensor bn_gamma, dbn_gamma;  // (h·d_k)
  Tensor bn_beta, dbn_beta;    // (h·d_k)
  Tensor running_mean, running_var;  // (h·d_k) buffers
  Tensor k1, k2;               // (n_keys, d_k/2)
  Tensor u, v;                 // (N, d)
  SparseRows dk1, dk2, du, dv; // gradients of the rows touched by the last backward

  // BatchNorm uses the batch's statistics when ctx.training (and updates the running ones), the
  // running statistics otherwise.
  void forward(const float* x, int T, float* y, const FfnContext& ctx) override;
  // dy (T, d) → dx (T, d) (overwritten); every gradient accumulates (the sparse ones by row union).
  void backward(const float* dy, float* dx) override;
  // The dense parameters: query.weight (W_q) and the BN affine query_bn.weight|bias.
  void collect_params(std::vector<Param>& out, const std::string& prefix) override;
  // The tables trained by rows: sub_keys.0|1 and the experts' experts.u|v.
  void collect_sparse_params(std::vector<SparseParam>& out, const std::string& prefix) override;
  // BatchNorm's running statistics query_bn.running_mean|var (none without query_bn).
  void collect_buffers(std::vector<NamedTensor>& out, const std::string& prefix) override;
  int64_t num_params() const override;         // every parameter, the full tables included
  int64_t num_active_params() const override;  // used by one token: W_q, BN, the h·k experts' u and v, and the sub-keys
  // Training FLOPs per token, forward + backward (a multiply-add is 2): the queries (×3), the sub-key
  // scores of every head (forward only: their gradient reaches only the k retrieved pairs), the k²
  // candidate sums, the retrieved pairs' key gradients, and the h·k experts (×3).
  double flops_per_token() const override;
  // The h·k experts token t retrieved (head by head, best first).
  std::optional<std::vector<int32_t>> experts_of(int t) const override;
  std::unique_ptr<FfnStats> new_stats() const override;  // PeerStats (peer/peer_stats.h)
  // Not yet: its tables train by rows (sparse gradients) that the trainer's all-reduce does not sum.
  void distribute(Comm* comm) override;

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
