// topk_softmax.cpp — Mixtral's router: the top k of the logits, gates a softmax over the chosen ones.
#include <vector>

#include "core/parallel.h"
#include "core/vmath.h"
#include "moe/routers/routers.h"

namespace moe {

// ---- topk_softmax (Mixtral): top-k of s, softmax over the chosen logits -------------------------

void TopkSoftmaxRouter::route(int T, const FfnContext&, Routing& r) {
  softmax_rows(T);
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* s = logits.data() + t * E;
    int32_t* idx = r.expert.data() + t * k;
    float* g = r.gate.data() + t * k;
    select_topk(s, idx);
    for (int i = 0; i < k; ++i) g[i] = s[idx[i]];
    softmax(g, g, k);
  }, 256);
}

void TopkSoftmaxRouter::gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const {
  restricted_softmax_backward(T, r, dgate, dlogits);
}

}  // namespace moe
