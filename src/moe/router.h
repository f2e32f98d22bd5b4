// router.h — the routers of SPEC §2: from the router input x_r (T, d) to, per token, k experts and
// their gates, and back. Router math is fp32 throughout.
//
//   s = x_r·W_rᵀ (T, E)  →  selection scores (router-specific)  →  group-limited top-k  →  gates
//
// Each router also gives the "affinity" P (T, E) that the balance losses average: softmax(s) for the
// softmax routers, σ(s)/Σσ(s) for sigmoid_bias (DeepSeek-V3).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "moe/config.h"

namespace moe {

struct Routing {
  int T = 0, k = 0;
  std::vector<int32_t> expert;  // (T, k) chosen experts, best first
  std::vector<float> gate;      // (T, k) their gates
};

// Losses a router computes itself (Shazeer's importance and load losses for noisy_topk).
struct RouterLosses {
  float importance = 0.f;
  float load = 0.f;
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

  // Fills r (expert ids and gates) from x_r (T, d). `step` keys the random streams (noise).
  virtual void forward(const float* xr, int T, bool training, uint64_t step, Routing& r);
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

 protected:
  // From logits (and prob) of T tokens, fill r.
  virtual void route(int T, bool training, uint64_t step, Routing& r) = 0;
  // Adds the gradient w.r.t. s from the gate gradient dgate into dlogits.
  virtual void gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const = 0;
  // The k best entries of `scores` (E) after group-limited masking, best first; ties: lower index.
  void select_topk(const float* scores, int32_t* idx) const;
  void softmax_rows(int T);  // prob = softmax(logits) row by row
};

}  // namespace moe
