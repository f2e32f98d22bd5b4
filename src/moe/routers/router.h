// router.h — the routers of docs/MECHANISMS.md §2: from the router input x_r (T, d) to, per token, k
// experts and their gates, and back. Router math is fp32 throughout.
//
//   s = x_r·W_rᵀ (T, E)  →  selection scores (router-specific)  →  group-limited top-k  →  gates
//
// Each router also gives the "affinity" P (T, E) that the balance losses average: softmax(s) for the
// softmax routers, σ(s)/Σσ(s) for sigmoid_bias (DeepSeek-V3).
//
// What the rest of the layer needs to know about a router kind (its trained weights, whether it
// applies its own capacity, whether it learns from a reward, which configs it accepts) is a fact of
// the router, kept here: RouterTraits and check_router_config. To add a router: its name in kind.h, a
// class in routers.h with its kTraits (and `check` if it restricts the config), a file of its own,
// and its line in the table of router.cpp; nothing outside this folder changes.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/comm.h"
#include "core/tensor.h"
#include "moe/config.h"
#include "moe/routing.h"
#include "nn/ffn.h"

namespace moe {

// The gate function of a plain softmax router, as the Hugging Face models write it: softmax over the
// top-k logits (Mixtral, GraniteMoE) or the top k of the softmax over all experts (Qwen2/3-MoE, OLMoE).
enum class Gating { other, softmax_of_topk, topk_of_softmax };

// The facts of a router kind that hold without building one.
struct RouterTraits {
  Gating gating = Gating::other;   // which HF gate function the router computes (import and export)
  int weight_matrices = 1;         // (E, d) matrices trained by gradient: W_r (and W_n); 0 for hash
  bool applies_capacity = false;   // its routing already obeys a capacity (expert choice): dispatch adds none
  bool trained_by_reward = false;  // it needs the per-token reward between forward and backward (reinforce)
  // It routes a rank's tokens alone as it would route them inside the whole batch, given the batch
  // sums Router::comm adds up (expert parallelism); not the routers that solve an assignment over the
  // whole batch (BASE, S-BASE, expert choice) or keep a reward baseline (reinforce).
  bool expert_parallel = true;
};
RouterTraits router_traits(RouterKind k);
// The router kind that computes gate function g (g != other).
RouterKind router_of_gating(Gating g);
// The rules a layer config must follow for its router (e.g. base routes one expert per token); a
// broken rule fails through `check`, naming the field.
void check_router_config(const MoeConfig& c, const ConfigCheck& check);

// Losses a router computes itself: Shazeer's importance and load losses (noisy_topk) and the
// REINFORCE surrogate (reinforce; known once set_reward has been called).
struct RouterLosses {
  float importance = 0.f;
  float load = 0.f;
  float rl = 0.f;
};

class Router {
 public:
  // What a router kind is and accepts unless its class says otherwise (routers.h).
  static constexpr RouterTraits kTraits{};
  static void check(const MoeConfig& /*c*/, const ConfigCheck& /*check*/) {}

  explicit Router(const MoeConfig& c);
  virtual ~Router() = default;
  static std::unique_ptr<Router> create(const MoeConfig& c);

  const MoeConfig cfg;
  const RouterTraits traits;
  // Expert parallelism: the group of ranks whose batch sums the router's batch statistics are (the
  // noisy_topk importance and load, sigmoid_bias's loads); null in a single process.
  Comm* comm = nullptr;
  const int E, k, d;
  Tensor w, dw;    // (E, d) W_r and its gradient
  // (E) added to s before routing when cfg.entry_steps > 0 (empty otherwise): 0 for experts that
  // have entered, down to −MoeConfig::kEntryOffset for experts `moe expand` added (docs/MECHANISMS.md
  // §6). A constant of the forward, so the gradients are unchanged; after_step_entry() raises it.
  Tensor entry_offset;
  Tensor logits;   // (T, E) s of the last forward
  Tensor prob;     // (T, E) affinity P of the last forward

  // Fills r (expert ids and gates) from x_r (T, d). Uses ctx.training, step, tokens and causal.
  virtual void forward(const float* xr, int T, const FfnContext& ctx, Routing& r);
  // dgate (T, k): gradient w.r.t. the gates of r. dlogits (T, E) holds on entry the gradient w.r.t.
  // s from the balance losses; the gate gradient is added to it. Accumulates dw (and the router's own
  // parameter gradients) and adds into dxr (T, d) the gradient w.r.t. the router input.
  virtual void backward(const float* xr, const Routing& r, const float* dgate, float* dlogits, float* dxr);
  // Adds into dlogits (T, E) the gradient through the affinity P, given dP (T, E).
  virtual void prob_backward(const float* dprob, float* dlogits, int T) const;
  virtual void params(std::vector<Param>& out, const std::string& prefix);
  virtual RouterLosses losses() const { return {}; }
  // Selection bias b (E) of sigmoid_bias; null for the others.
  virtual Tensor* selection_bias() { return nullptr; }
  // State that is not trained by gradient but belongs in checkpoints (name relative to the router,
  // e.g. "bias"): sigmoid_bias's b, reinforce's reward baseline.
  virtual std::vector<std::pair<std::string, Tensor*>> buffers() { return {}; }
  // Per-token reward (r.T) for the routing r of the last forward, NaN where a token has none; called
  // between forward and backward for routers trained by reward (reinforce). No-op for the others.
  virtual void set_reward(const float* /*reward*/, const Routing& /*r*/) {}
  // After each optimizer step (sigmoid_bias: move the bias by the loads routed since the last call;
  // reinforce: fold the step's mean reward into the baseline).
  virtual void after_step() {}
  // After each optimizer step: every negative entry offset rises by kEntryOffset / entry_steps, up to 0.
  void after_step_entry();

 protected:
  // From logits (and prob) of T tokens, fill r.
  virtual void route(int T, const FfnContext& ctx, Routing& r) = 0;
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
