// balance.h — the load-balancing losses of docs/MECHANISMS.md §3 that act on the router's affinity P (T, E) and its
// logits s, each with its own coefficient and reported separately:
//   aux     Switch/GShard   α·E·Σ_i f_i·P̄_i,   f_i = count_i/(T·k), P̄_i = mean_t P_{t,i}
//   z       ST-MoE          β·mean_t (logsumexp_i s_{t,i})²
//   expert  DeepSeek α1     α1·Σ_i f_i·P̄_i,    f_i = E·count_i/(k·T)
//   device  DeepSeek α2     α2·Σ_d f'_d·P'_d,  f'_d = mean_{i∈d} f_i, P'_d = Σ_{i∈d} P̄_i (D groups)
//   seq     DeepSeek-V3     α·mean_b Σ_i f_i^b·P̄_i^b, per sequence b of L tokens
// counts are the routed (pre-capacity) assignments; they carry no gradient.
//
// Expert/data parallelism (comm given, docs/DISTRIBUTED.md): T, counts, P̄ and the per-sequence and
// per-token means are over the tokens of every rank, as one process holding the whole batch computes
// them; each rank gets the same losses and the gradients of its own tokens.
#pragma once
#include <cstdint>
#include <vector>

#include "core/comm.h"
#include "moe/config.h"
#include "moe/routing.h"

namespace moe {

struct BalanceLosses {
  float aux = 0.f, z = 0.f, expert = 0.f, device = 0.f, seq = 0.f;
};

// Computes the losses of `cfg` from prob/logits (T, E) and the routing r. When dprob and dlogits are
// non-null, adds the gradients of the summed losses w.r.t. P into dprob and w.r.t. s into dlogits.
BalanceLosses balance_losses(const MoeConfig& cfg, const float* prob, const float* logits, const Routing& r,
                             int seq_len, float* dprob, float* dlogits, Comm* comm = nullptr);

// True when some loss of `cfg` needs the gradient through P.
bool balance_uses_prob(const MoeConfig& cfg);

}  // namespace moe
