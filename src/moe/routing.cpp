#include "moe/routing.h"

#include <cmath>

namespace moe {

int32_t Routing::first(int t) const {
  const int32_t* e = expert.data() + static_cast<size_t>(t) * k;
  if (!expert_slots) return e[0];
  const float* g = gate.data() + static_cast<size_t>(t) * k;
  int32_t best = -1;
  for (int i = 0; i < k; ++i)
    if (e[i] >= 0 && (best < 0 || g[i] > g[best])) best = i;
  return best < 0 ? -1 : e[best];
}

std::vector<int32_t> Routing::experts_of(int t) const {
  std::vector<int32_t> out;
  for (int i = 0; i < k; ++i)
    if (const int32_t e = expert[static_cast<size_t>(t) * k + i]; e >= 0) out.push_back(e);
  return out;
}

int64_t expert_capacity(float capacity_factor, int T, int k, int E) {
  if (capacity_factor <= 0.f) return -1;
  return static_cast<int64_t>(std::ceil(static_cast<double>(capacity_factor) * T * k / E));
}

}  // namespace moe
