// product_keys.h — PEER (He 2024, "Mixture of A Million Experts"), docs/MECHANISMS.md §5: retrieval of
// the best of N = n_keys² single-neuron experts by product keys. (The PEER layer, peer_layer.h, builds
// on this.)
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
