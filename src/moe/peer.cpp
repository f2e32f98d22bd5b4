#include "moe/peer.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "core/error.h"
#include "core/topk.h"

namespace moe {

void product_key_topk(const float* s1, const float* s2, int n_keys, int k, int32_t* idx, float* score) {
  MOE_CHECK(k >= 1 && k <= n_keys, "product keys: top_k = " + std::to_string(k) + " must be in [1, n_keys = " +
                                       std::to_string(n_keys) + "]");
  thread_local std::vector<int32_t> a, b;
  thread_local std::vector<uint64_t> cand;
  a.resize(static_cast<size_t>(k));
  b.resize(static_cast<size_t>(k));
  topk_desc(s1, n_keys, k, a.data());
  topk_desc(s2, n_keys, k, b.data());
  cand.resize(static_cast<size_t>(k) * k);
  for (int i = 0; i < k; ++i) {
    const float v1 = s1[a[static_cast<size_t>(i)]];
    const uint32_t base = static_cast<uint32_t>(a[static_cast<size_t>(i)]) * static_cast<uint32_t>(n_keys);
    for (int j = 0; j < k; ++j)
      cand[static_cast<size_t>(i) * k + j] =
          order_key(v1 + s2[b[static_cast<size_t>(j)]], base + static_cast<uint32_t>(b[static_cast<size_t>(j)]));
  }
  std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), std::greater<uint64_t>());
  for (int i = 0; i < k; ++i) {
    const uint32_t e = key_index(cand[static_cast<size_t>(i)]);
    idx[i] = static_cast<int32_t>(e);
    score[i] = s1[e / static_cast<uint32_t>(n_keys)] + s2[e % static_cast<uint32_t>(n_keys)];
  }
}

}  // namespace moe
