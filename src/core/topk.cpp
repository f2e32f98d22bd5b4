#include "core/topk.h"

#include <immintrin.h>

#include <algorithm>
#include <functional>
#include <vector>

namespace moe {

int topk_keys(const uint64_t* keys, int n, int k, uint64_t* best, int m) {
  // best[0..m) sorted descending; a key enters only when it beats the current k-th (keys are unique).
  for (int i = 0; i < n; ++i) {
    const uint64_t key = keys[i];
    if (m == k && key <= best[k - 1]) continue;
    int j = m < k ? m++ : k - 1;
    while (j > 0 && best[j - 1] < key) {
      best[j] = best[j - 1];
      --j;
    }
    best[j] = key;
  }
  return m;
}

void topk_desc(const float* s, int n, int k, int32_t* idx) {
  thread_local std::vector<uint64_t> keys, best;
  best.resize(static_cast<size_t>(k));
  if (k * 8 > n) {  // a large share of n: sorting is cheaper than insertion
    keys.resize(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) keys[static_cast<size_t>(i)] = order_key(s[i], static_cast<uint32_t>(i));
    std::partial_sort(keys.begin(), keys.begin() + k, keys.end(), std::greater<uint64_t>());
    std::copy_n(keys.begin(), k, best.begin());
  } else {
    // Insertion against the current k-th, skipping by a float compare the scores below it (most of
    // them); a score equal to it may still win on the index, so it goes through the keys.
    for (int i = 0; i < k; ++i) best[static_cast<size_t>(i)] = order_key(s[i], static_cast<uint32_t>(i));
    std::sort(best.begin(), best.end(), std::greater<uint64_t>());
    float kth = s[key_index(best[static_cast<size_t>(k - 1)])];
    auto consider = [&](int i) {
      if (s[i] < kth) return;
      const uint64_t key = order_key(s[i], static_cast<uint32_t>(i));
      topk_keys(&key, 1, k, best.data(), k);
      kth = s[key_index(best[static_cast<size_t>(k - 1)])];
    };
    int i = k;
#if defined(__AVX512F__)
    // 16 scores a compare: only the lanes not below the k-th (NaN included) go through the keys.
    for (; i + 16 <= n; i += 16) {
      __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + i), _mm512_set1_ps(kth), _CMP_NLT_UQ);
      while (m) {
        consider(i + __builtin_ctz(m));
        m = static_cast<__mmask16>(m & (m - 1));
      }
    }
#endif
    for (; i < n; ++i) consider(i);
  }
  for (int i = 0; i < k; ++i) idx[i] = static_cast<int32_t>(key_index(best[static_cast<size_t>(i)]));
}

}  // namespace moe
