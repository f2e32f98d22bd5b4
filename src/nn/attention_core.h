// attention_core.h — the causal attention of one (sequence, head) pair, fused: scores, softmax and
// their product with the values in one pass over blocks of query rows, and the backward likewise,
// on one thread (core/small_gemm.h's register tiles; no BLAS call, no packing). The probabilities
// are never stored: the forward keeps each row's normaliser (log Σ exp of its scaled scores), and the
// backward computes each block's probabilities again from it, as FlashAttention does. Memory is
// O(L) per head, not O(L²), and a block's scores stay in the core's caches.
//
// Forward, for L positions and head width hd:
//   P = softmax_causal(scale · q·kᵀ), zero above the diagonal;  o = P·v;  lse_i = log Σ_j exp(scale·q_i·k_j)
// Backward, given lse and do:
//   P again from lse;  dP = do·vᵀ;  dS = P ⊙ (dP − Σ_j P·dP) (row-wise, causal part)
//   dq = scale · dS·k;  dk += scale · dSᵀ·q;  dv += Pᵀ·do
// The rows are taken in blocks of kCausalBlock: block [r0, r1) is computed against keys [0, r1) only,
// which for n blocks computes (1 + 1/n)/2 of the square. q, o, dq, do have row stride ldq; k, v, dk, dv
// row stride ldkv (the heads of a batch row lie side by side).
#pragma once
#include <cstddef>

namespace moe {

constexpr int kCausalBlock = 24;

// The query-key pairs the functions below compute for L positions (the FLOPs are 4·hd per pair
// forward, 10·hd backward: the scores again, then four products).
double causal_pairs(int L);

// m query rows at positions past … past + m − 1 against the keys and values of positions
// 0 … past + m − 1 (training: past = 0, m = L; a prompt's prefill after `past` cached positions).
// lse (m) may be null: inference keeps no normalisers.
void causal_attention_forward(int m, int past, int hd, float scale, const float* q, std::ptrdiff_t ldq, const float* k,
                              const float* v, std::ptrdiff_t ldkv, float* o, float* lse);

// dq is overwritten, dk and dv accumulate (the query heads of a group share their keys and values).
void causal_attention_backward(int L, int hd, float scale, const float* q, std::ptrdiff_t ldq, const float* k,
                               const float* v, std::ptrdiff_t ldkv, const float* lse, const float* dout, float* dq,
                               float* dk, float* dv);

}  // namespace moe
