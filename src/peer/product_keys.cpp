#include "peer/product_keys.h"

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/topk.h"

namespace moe {

void product_key_topk(const float* s1, const float* s2, int n_keys, int k, int32_t* idx, float* score) {
  MOE_CHECK(k >= 1 && k <= n_keys, "product keys: top_k = " + std::to_string(k) + " must be in [1, n_keys = " +
                                       std::to_string(n_keys) + "]");
  thread_local std::vector<int32_t> a, b;
  thread_local std::vector<uint64_t> best;
  a.resize(static_cast<size_t>(k));
  b.resize(static_cast<size_t>(k));
  topk_desc(s1, n_keys, k, a.data());
  topk_desc(s2, n_keys, k, b.data());
  // The top k of the k² sums by insertion against the current k-th. The halves are sorted, so along
  // a row (fixed i) the sums only fall: once one is below the k-th value the rest of the row is too,
  // and once a row's first sum is, every later row's is. Skipping them is exact.
  best.resize(static_cast<size_t>(k));
  const uint32_t nk = static_cast<uint32_t>(n_keys);
  auto key_of = [&](int i, int j, float v) {
    return order_key(v, static_cast<uint32_t>(a[static_cast<size_t>(i)]) * nk + static_cast<uint32_t>(b[static_cast<size_t>(j)]));
  };
  const float v0 = s1[a[0]];
  for (int j = 0; j < k; ++j) best[static_cast<size_t>(j)] = key_of(0, j, v0 + s2[b[static_cast<size_t>(j)]]);
  std::sort(best.begin(), best.end(), std::greater<uint64_t>());
  auto kth_value = [&] {
    const uint32_t e = key_index(best[static_cast<size_t>(k - 1)]);
    return s1[e / nk] + s2[e % nk];
  };
  float kth = kth_value();
  for (int i = 1; i < k; ++i) {
    const float v1 = s1[a[static_cast<size_t>(i)]];
    if (v1 + s2[b[0]] < kth) break;
    for (int j = 0; j < k; ++j) {
      const float v = v1 + s2[b[static_cast<size_t>(j)]];
      if (v < kth) break;
      const uint64_t key = key_of(i, j, v);
      topk_keys(&key, 1, k, best.data(), k);
      kth = kth_value();
    }
  }
  for (int i = 0; i < k; ++i) {
    const uint32_t e = key_index(best[static_cast<size_t>(i)]);
    idx[i] = static_cast<int32_t>(e);
    score[i] = s1[e / static_cast<uint32_t>(n_keys)] + s2[e % static_cast<uint32_t>(n_keys)];
  }
}

}  // namespace moe
