// moe_layer.h — the MoE feed-forward layer (docs/MECHANISMS.md §1–4):
//
//   x (T, d) → [jitter] → router: experts (T, k), gates (T, k) + balance losses
//            → dispatch plan (counting sort, capacity) → gather (rows, d)
//            → grouped SwiGLU experts → combine: y_t = Σ_i g_{t,i}·e_i(x_t)  (+ shared experts)
//
// An Ffn (nn/ffn.h): explicit forward/backward; the layer owns its parameters, their gradients and
// the activations of the last forward. backward() must follow the forward it differentiates, with x
// still alive.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/tensor.h"
#include "moe/balance.h"
#include "moe/config.h"
#include "moe/dispatch.h"
#include "moe/expert_exchange.h"
#include "moe/experts.h"
#include "moe/routers/router.h"
#include "nn/ffn.h"

namespace moe {

// Every loss term of the layer, each already multiplied by its coefficient.
struct MoeLosses {
  BalanceLosses balance;
  RouterLosses router;
  float total() const {
    return balance.aux + balance.z + balance.expert + balance.device + balance.seq + router.importance + router.load +
           router.rl;
  }
};

// Wall time of each phase of the last forward and backward, in milliseconds.
struct MoeTimings {
  double router = 0, dispatch = 0, experts = 0, combine = 0, shared = 0;              // forward
  double router_bwd = 0, combine_bwd = 0, experts_bwd = 0, scatter_bwd = 0, shared_bwd = 0;  // backward
  double exchange = 0, exchange_bwd = 0;  // expert parallelism: the all-to-alls (forward, backward)
  double forward_total() const { return router + dispatch + experts + combine + shared + exchange; }
  double backward_total() const {
    return router_bwd + combine_bwd + experts_bwd + scatter_bwd + shared_bwd + exchange_bwd;
  }
};

class MoeLayer : public Ffn {
 public:
  explicit MoeLayer(const MoeConfig& c);  // validates c; initialises the parameters from c.seed

  const MoeConfig cfg;
  std::unique_ptr<Router> router;
  ExpertBank experts;  // E·G routed experts of width moe_intermediate_size/G
  ExpertBank shared;   // the S shared experts as one expert of width S·shared_width (E = 1)
  Tensor w_sg, dw_sg;  // (d) Qwen2-MoE shared-expert gate

  // Noise, jitter and the noisy load estimate apply only when ctx.training; ctx.seq_len separates
  // sequences for the sequence-wise loss; ctx.tokens feed the hash router; ctx.causal makes expert
  // choice fall back to token choice.
  void forward(const float* x, int T, float* y, const FfnContext& ctx) override;
  void backward(const float* dy, float* dx) override;
  // Parameter names: router.weight (router.noise_weight), experts.w1|w3|w2, shared_experts.w1|w3|w2,
  // shared_expert_gate.weight; buffers router.<name> (router.bias, router.baseline,
  // router.entry_offset).
  void collect_params(std::vector<Param>& out, const std::string& prefix) override;
  void collect_buffers(std::vector<NamedTensor>& out, const std::string& prefix) override;
  int64_t num_params() const override;         // all parameters (routed, shared, router)
  int64_t num_active_params() const override;  // used by one token: k routed experts + shared + router
  // Routed and shared experts packed; the router and the shared-expert gate stay fp32.
  void pack_weights(WeightFormat f) override;
  int64_t packed_active_params() const override;
  double packed_active_bytes() const override;
  // 6 per active weight outside the router, 14 per router weight: the router's d·E·G (Krajewski Eq. 10).
  double flops_per_token() const override;
  float loss() const override { return losses_.total(); }
  bool wants_reward() const override { return router->traits.trained_by_reward; }
  void set_reward(const float* reward) override;
  // DeepSeek-V3: b_i += γ·sign(mean_j load_j − load_i) from the loads routed since the last call;
  // reinforce: the reward baseline takes in the step's mean reward (Router::after_step).
  // Experts added by `moe expand`: their entry offsets rise (Router::after_step_entry).
  void after_step() override {
    router->after_step();
    router->after_step_entry();
  }
  std::optional<std::vector<int32_t>> experts_of(int t) const override { return routing_.experts_of(t); }
  std::unique_ptr<FfnStats> new_stats() const override;  // RoutingStats (moe/routing_stats.h)
  // Expert parallelism: keeps experts [r·E/P, (r+1)·E/P) (drawn as one process draws them), sends
  // each routed row to its expert's rank and back (ExpertExchange), computes the capacity, the
  // balance losses and the router's batch statistics over every rank's tokens. Refuses a router
  // that cannot route a share of the batch alone, and E not divisible by P.
  void distribute(Comm* comm) override;
  Comm* comm() const { return xchg_.comm; }
  const ExpertExchange& exchange() const { return xchg_; }

  // Lifelong expansion (docs/MECHANISMS.md §6; src/moe/expand.cpp). This layer has more routed experts
  // than `old` (same width and granularity); takes old's parameters and state: its experts, router
  // rows, shared experts and router buffers are copied, and the experts after old's are initialised
  // as `init` says. copy_noise: std of the noise added to copied experts, relative to each tensor's std.
  enum class NewExperts { random, copy };
  void grow_from(const MoeLayer& old, NewExperts init, float copy_noise, uint64_t seed);
  // Adds to `out` the rows of this layer that existed in a layer of `old_experts` routed experts:
  // the old routed experts (rows < old_experts of experts.w1|w3|w2), the shared experts and their gate,
  // and with `router` the old router rows.
  void freeze_old(int old_experts, bool router, const std::string& prefix, FreezeMask& out);

  // Results of the last forward.
  const MoeLosses& losses() const { return losses_; }
  const Routing& routing() const { return routing_; }
  const DispatchPlan& plan() const { return plan_; }
  const MoeTimings& timings() const { return timings_; }
  const Tensor& jitter() const { return jitter_; }  // (T, d) multipliers; empty without jitter
  int seq_len() const { return seq_len_; }         // of the last forward

 private:
  const float* x_ = nullptr;   // input of the last forward
  const float* xr_ = nullptr;  // router input (x, or x ⊙ jitter)
  int T_ = 0, seq_len_ = 0;
  bool training_ = false;
  Tensor jitter_, xr_buf_;     // (T, d)
  Routing routing_;
  DispatchPlan plan_;
  Tensor xbuf_, ybuf_, dybuf_;  // (rows, d) fp32 mode: gathered x, expert outputs (then dX), gathered dy
  bf16_vector ybuf_bf16_;      // (rows, d) expert outputs in bf16 mode; the experts' own bf16 buffers hold x, dy and dX
  Tensor shared_out_, sgate_;  // (T, d) shared experts' output, (T) σ(x·w_sg)
  // Backward scratch, kept between steps so that large buffers are not page-faulted in every step.
  Tensor dgate_;               // (T, k)
  Tensor row_gate_, row_dgate_;  // (rows) gate of each buffer row and its gradient
  Tensor dlogits_, dprob_;     // (T, E)
  Tensor dxr_, dys_, dxs_;     // (T, d)
  Tensor dz_;                  // (T)
  // Expert parallelism: the exchange, and the rows of this rank's plan (plan order) going out and
  // coming back: x (or dy) sent, y (or dx) received. xbuf_, ybuf_, dybuf_ and the experts' bf16
  // buffers then hold the rows this rank's experts compute, expert-major.
  ExpertExchange xchg_;
  Tensor xsend_, yloc_;        // (rows of the plan, d) fp32 mode; yloc_ also dX in backward
  bf16_vector xsend_b_, yloc_b_;  // the same in bf16 mode
  Tensor gate_in_, dgate_in_;  // (rows received) gates of the experts' rows, and their gradients
  Comm* batch_comm_ = nullptr;    // the ranks whose tokens form this forward's batch (null: this rank's alone)
  void plan_dispatch(float cf);   // plan_ (and the exchange's counts) from routing_
  void report_profile(bool backward) const;  // timings_ as phases of `moe train --profile` (core/profile.h)
  MoeLosses losses_;
  MoeTimings timings_;
};

}  // namespace moe
