// router.h — the routers of docs/MECHANISMS.md §2: from the router input x_r (T, d) to, per token, k experts and
// their gates, and back. Router math is fp32 throughout.
//
//   s = x_r·W_rᵀ (T, E)  →  selection scores (router-specific)  →  group-limited top-k  →  gates
//
// Each router also gives the "affinity" P (T, E) that the balance losses average: softmax(s) for the
// softmax routers, σ(s)/Σσ(s) for sigmoid_bias (DeepSeek-V3).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "moe/config.h"

namespace moe {

// The routing of T tokens as k slots per token. Token-choice routers fill every slot, best first.
// Expert choice uses one slot per expert (k = E, slot e holds expert e or -1 when expert e did not
// take the token): a token may reach any number of experts, zero included.
struct Routing {
  int T = 0, k = 0;
  std::vector<int32_t> expert;  // (T, k) chosen experts, -1 for an empty slot
  std::vector<float> gate;      // (T, k) their gates (0 for an empty slot)
  bool expert_slots = false;    // slot e is expert e (expert choice)

  // The token's first expert: slot 0 for token choice, the largest gate for expert choice; -1: none.
  int32_t first(int t) const;
};

// What a router may use besides its input.
struct RouteContext {
  bool training = true;              // noise, sampling and balanced assignment apply only in training
  uint64_t step = 0;                 // keys the random streams (noise, sampling)
  const int32_t* tokens = nullptr;   // (T) token ids: the hash router needs them
  bool causal = false;               // a token's routing may not depend on later tokens (decoding)
};

// Losses a router computes itself: Shazeer's importance and load losses (noisy_topk) and the
// REINFORCE surrogate (reinforce; known once set_reward has been called).
struct RouterLosses {
  float importance = 0.f;
  float load = 0.f;
  float rl = 0.f;
};

class Router {
 public:
  explicit Router(const MoeConfig& c);
  virtual ~Router() = default;
  static std::unique_ptr<Router> create(const MoeConfig& c);

  const MoeConfig cfg;
  const int E, k, d;
  Tensor w, dw;    // (E, d) W_r and its gradient
  Tensor logits;   // (T, E) s of the last forward
  Tensor prob;     // (T, E) affinity P of the last forward

  // Fills r (expert ids and gates) from x_r (T, d).
  virtual void forward(const float* xr, int T, const RouteContext& ctx, Routing& r);
  // dgate (T, k): gradient w.r.t. the gates of r. dlogits (T, E) holds on entry the gradient w.r.t.
  // s from the balance losses; the gate gradient is added to it. Accumulates dw (and the router's own
  // parameter gradients) and adds into dxr (T, d) the gradient w.r.t. the router input.
  virtual void backward(const float* xr, const Routing& r, const float* dgate, float* dlogits, float* dxr);
  // Adds into dlogits (T, E) the gradient through the affinity P, given dP (T, E).
  virtual void prob_backward(const float* dprob, float* dlogits, int T) const;
  virtual void params(std::vector<Param>& out, const std::string& prefix);
  virtual RouterLosses losses() const { return {}; }
  // Selection bias b (E) of sigmoid_bias; empty for the others.
  virtual Tensor* selection_bias() { return nullptr; }
  // State that is not trained by gradient but belongs in checkpoints (name relative to the router,
  // e.g. "bias"): sigmoid_bias's b, reinforce's reward baseline.
  virtual std::vector<std::pair<std::string, Tensor*>> buffers() { return {}; }
  // Per-token reward (r.T) for the routing r of the last forward, NaN where a token has none; called
  // between forward and backward by routers trained by reward (reinforce). No-op for the others.
  virtual void set_reward(const float* /*reward*/, const Routing& /*r*/) {}
  // After each optimizer step (reinforce: fold the step's mean reward into the baseline).
  virtual void after_step() {}

 protected:
  // From logits (and prob) of T tokens, fill r.
  virtual void route(int T, const RouteContext& ctx, Routing& r) = 0;
  // Adds the gradient w.r.t. s from the gate gradient dgate into dlogits.
  virtual void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const = 0;
  // The k best entries of `scores` (E) after group-limited masking, best first; ties: lower index.
  void select_topk(const float* scores, int32_t* idx) const;
  void softmax_rows(int T);  // prob = softmax(logits) row by row
  // Gates that are entries of prob = softmax(s): given the gradient of each slot's p (T, r.k), adds
  // the gradient w.r.t. s into dlogits. Empty slots (-1) are skipped.
  void softmax_slots_backward(int T, const Routing& r, const float* dslot, float* dlogits) const;
  // Gates softmax(s restricted to the k chosen experts): adds the gradient w.r.t. s into dlogits.
  void restricted_softmax_backward(int T, const Routing& r, const float* dgate, float* dlogits) const;
  // Gates σ(s_e) of the chosen experts: adds the gradient w.r.t. s into dlogits.
  void sigmoid_gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const;
};

}  // namespace moe
