// cross_entropy.h — softmax cross-entropy over a vocabulary, averaged over the counted targets.
#pragma once
#include <cstdint>

namespace moe {

constexpr int32_t kIgnoreIndex = -1;

// logits (T, V), targets (T) with kIgnoreIndex for positions that do not count. Returns the mean loss
// over counted positions and, when losses is non-null, each position's loss (0 where ignored). When
// dlogits is non-null writes d(mean loss)/d(logits) = (softmax − onehot)/N (0 rows where ignored).
double cross_entropy(const float* logits, const int32_t* targets, int T, int V, float* dlogits,
                     float* losses = nullptr);

// Output-level distillation (docs/MECHANISMS.md §6): weight · mean over counted positions of
// KL(q_t ‖ p_t) = Σ_v q_v (log q_v − log p_v), with q = softmax(teacher) the frozen teacher's
// distribution and p = softmax(logits). Returns that; when dlogits is non-null adds its gradient
// weight·(p − q)/N (nothing where a target is ignored).
double distill_kl(const float* logits, const float* teacher, const int32_t* targets, int T, int V, float weight,
                  float* dlogits);

}  // namespace moe
