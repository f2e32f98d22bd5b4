// topk.h — top-k selection by one 64-bit key per candidate: the score's bits mapped to an
// order-preserving unsigned integer in the high half, the inverted index in the low half. A plain
// integer sort then orders by score (descending) and, among equal scores, by index (ascending).
#pragma once
#include <cstdint>
#include <cstring>

namespace moe {

inline uint64_t order_key(float score, uint32_t index) {
  uint32_t u;
  std::memcpy(&u, &score, 4);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(u) << 32) | (0xffffffffu - index);
}
inline uint32_t key_index(uint64_t key) { return 0xffffffffu - static_cast<uint32_t>(key); }

// The k largest of n distinct keys into best (descending), by insertion against the current k-th: about
// n comparisons when k << n. best may already hold m keys (sorted descending) to merge with. Returns
// how many it holds, min(k, m + n).
int topk_keys(const uint64_t* keys, int n, int k, uint64_t* best, int m = 0);

// The k best of s (n): indices best first (ties: lower index). k <= n.
void topk_desc(const float* s, int n, int k, int32_t* idx);

}  // namespace moe
