#include "core/topk.h"

#include <immintrin.h>

#include <algorithm>
#include <climits>
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

#if defined(__AVX512F__)
static __mmask16 first_lanes(int m) {  // lanes [0, m) of a vector, m clamped to [0, 16]
  return static_cast<__mmask16>(m >= 16 ? 0xffff : (m <= 0 ? 0 : (1u << m) - 1));
}

// Rank of each of the m keys u (position order = index order) among them: those larger, or equal
// at a lower position. rank_of(i) < m is unique: the keys' order, as topk_keys sorts it.
static int rank_among(const uint32_t* u, int m, int i) {
  const __m512i ui = _mm512_set1_epi32(static_cast<int>(u[i]));
  int rank = 0;
  for (int lo = 0; lo < m; lo += 16) {
    const __m512i uv = _mm512_load_si512(u + lo);
    rank += __builtin_popcount(_mm512_mask_cmpgt_epu32_mask(first_lanes(m - lo), uv, ui)) +
            __builtin_popcount(_mm512_mask_cmpeq_epu32_mask(first_lanes(i - lo), uv, ui));
  }
  return rank;
}

// 17 to 128 scores, k a large share of them: the k-th largest key found bit by bit (32 rounds of
// counting the keys at or above a candidate, 16 compares a vector), the k best compressed out in
// index order (ties at the k-th: the lowest indices), then ranked among themselves. The same result
// as the keys' sort, with no data-dependent branches but the ties.
static void topk_small(const float* s, int n, int k, int32_t* idx) {
  alignas(64) uint32_t u[128], su[128];
  alignas(64) int32_t si[128];
  const int nv = (n + 15) / 16;
  for (int v = 0; v < nv; ++v) {
    // order_key's map: negative floats inverted, the others with the sign bit set.
    const __m512i b = _mm512_maskz_loadu_epi32(first_lanes(n - 16 * v), s + 16 * v);
    const __mmask16 neg = _mm512_movepi32_mask(b);
    const __m512i key = _mm512_mask_xor_epi32(_mm512_or_si512(b, _mm512_set1_epi32(INT32_MIN)), neg, b,
                                              _mm512_set1_epi32(-1));
    _mm512_store_si512(u + 16 * v, key);
  }
  // How many keys are at or above c (ge) or above it.
  auto count = [&](uint32_t c, bool ge) {
    const __m512i cv = _mm512_set1_epi32(static_cast<int>(c));
    int total = 0;
    for (int v = 0; v < nv; ++v) {
      const __m512i uv = _mm512_load_si512(u + 16 * v);
      const __mmask16 valid = first_lanes(n - 16 * v);
      total += __builtin_popcount(ge ? _mm512_mask_cmpge_epu32_mask(valid, uv, cv)
                                     : _mm512_mask_cmpgt_epu32_mask(valid, uv, cv));
    }
    return total;
  };
  uint32_t kth = 0;  // the largest value with at least k keys at or above it: the k-th largest key
  for (int bit = 31; bit >= 0; --bit)
    if (count(kth | (1u << bit), true) >= k) kth |= 1u << bit;
  const __m512i t = _mm512_set1_epi32(static_cast<int>(kth));
  int ties = k - count(kth, false);  // keys equal to the k-th that make the cut, lowest index first
  int m = 0;
  for (int v = 0; v < nv; ++v) {
    const __mmask16 valid = first_lanes(n - 16 * v);
    const __m512i uv = _mm512_load_si512(u + 16 * v);
    __mmask16 take = _mm512_mask_cmpgt_epu32_mask(valid, uv, t);
    for (unsigned eq = _mm512_mask_cmpeq_epu32_mask(valid, uv, t); eq && ties > 0; eq &= eq - 1, --ties)
      take = static_cast<__mmask16>(take | (eq & -eq));
    const __m512i lane = _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(16 * v));
    _mm512_mask_compressstoreu_epi32(su + m, take, uv);
    _mm512_mask_compressstoreu_epi32(si + m, take, lane);
    m += __builtin_popcount(take);
  }
  for (int i = m; i < (m + 15) / 16 * 16; ++i) su[i] = 0;  // the tail of the last vector rank_among reads
  for (int i = 0; i < m; ++i) idx[rank_among(su, m, i)] = si[i];
}
#endif

void topk_desc(const float* s, int n, int k, int32_t* idx) {
#if defined(__AVX512F__)
  if (n > 16 && n <= 128 && k * 16 > n) {  // at 16 or fewer the partial sort below is as fast or faster
    topk_small(s, n, k, idx);
    return;
  }
#endif
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
