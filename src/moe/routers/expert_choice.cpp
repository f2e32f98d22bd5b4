// expert_choice.cpp — expert choice routing (Zhou et al. 2022): experts pick tokens.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "core/parallel.h"
#include "core/topk.h"
#include "core/vmath.h"
#include "moe/routers/routers.h"

namespace moe {

int64_t ExpertChoiceRouter::capacity(int T) const {
  return std::min<int64_t>(T, expert_capacity(cfg.capacity_factor > 0.f ? cfg.capacity_factor : 1.f, T, k, E));
}

void ExpertChoiceRouter::check(const MoeConfig& c, const ConfigCheck& check) {
  check.require(c.drop_policy == DropPolicy::position,
                "router = \"expert_choice\" sets its own capacity (each expert takes its top C tokens); leave "
                "drop_policy = position");
}

void ExpertChoiceRouter::route(int T, const FfnContext& ctx, Routing& r) {
  softmax_rows(T);
  if (ctx.causal) {  // decoding: token choice, top-k of p
    parallel_for(static_cast<size_t>(T), [&](size_t t) {
      const float* p = prob.data() + t * E;
      int32_t* idx = r.expert.data() + t * k;
      select_topk(p, idx);
      for (int i = 0; i < k; ++i) r.gate[t * k + i] = p[idx[i]];
    }, 256);
    return;
  }
  r.k = E;
  r.expert_slots = true;
  r.expert.assign(static_cast<size_t>(T) * E, -1);
  r.gate.assign(static_cast<size_t>(T) * E, 0.f);
  const int64_t C = capacity(T);
  // Per expert, its C tokens of largest p_{t,e} (ties: the earlier token), by one order key per token.
  parallel_for(static_cast<size_t>(E), [&](size_t e) {
    thread_local std::vector<uint64_t> keys;
    keys.resize(static_cast<size_t>(T));
    for (int t = 0; t < T; ++t)
      keys[static_cast<size_t>(t)] = order_key(prob[static_cast<size_t>(t) * E + e], static_cast<uint32_t>(t));
    std::nth_element(keys.begin(), keys.begin() + (C - 1), keys.end(), std::greater<uint64_t>());
    for (int64_t i = 0; i < C; ++i) {
      const size_t t = key_index(keys[static_cast<size_t>(i)]);
      r.expert[t * E + e] = static_cast<int32_t>(e);
      r.gate[t * E + e] = prob[t * E + e];
    }
  }, 1);
}

void ExpertChoiceRouter::gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const {
  softmax_slots_backward(T, r, dgate, dlogits);  // the gates are p_{t,e} themselves
}

}  // namespace moe
