#include "core/topk.h"

#include <algorithm>
#include <functional>
#include <vector>

namespace moe {

void topk_desc(const float* s, int n, int k, int32_t* idx) {
  thread_local std::vector<uint64_t> keys;
  keys.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) keys[static_cast<size_t>(i)] = order_key(s[i], static_cast<uint32_t>(i));
  std::partial_sort(keys.begin(), keys.begin() + k, keys.end(), std::greater<uint64_t>());
  for (int i = 0; i < k; ++i) idx[i] = static_cast<int32_t>(key_index(keys[static_cast<size_t>(i)]));
}

}  // namespace moe
