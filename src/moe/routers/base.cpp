// base.cpp — BASE layers (Lewis et al. 2021): training routes by the exact balanced linear
// assignment of tokens to experts, solved by Bertsekas's auction algorithm with ε-scaling.
#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>

#include "core/error.h"
#include "core/parallel.h"
#include "core/vmath.h"
#include "moe/routers/routers.h"

namespace moe {

// Each expert's cap[e] slots are distinct objects of the auction with their own prices. A token bids
// for the cheapest slot of its best expert; its second-best value counts every other slot, the
// second-cheapest slot of the same expert included (the slots of one expert are "similar objects").
// Each expert keeps its slots in a min-heap by price: the cheapest is the root, the second-cheapest
// one of the root's children, and a bid only raises the root's price (a sift-down).
std::vector<int32_t> balanced_assignment(const float* scores, int T, int E, const std::vector<int>& cap,
                                         double eps_final) {
  MOE_CHECK(static_cast<int>(cap.size()) == E, "balanced_assignment: cap needs one entry per column");
  int64_t total = 0;
  for (int c : cap) {
    MOE_CHECK(c >= 0, "balanced_assignment: negative capacity");
    total += c;
  }
  MOE_CHECK(total == T, "balanced_assignment: capacities sum to " + std::to_string(total) + ", not to the " +
                            std::to_string(T) + " rows");
  std::vector<int32_t> assigned(static_cast<size_t>(T), -1);
  if (T == 0) return assigned;
  std::vector<int64_t> off(static_cast<size_t>(E) + 1, 0);
  for (int e = 0; e < E; ++e) off[static_cast<size_t>(e) + 1] = off[static_cast<size_t>(e)] + cap[static_cast<size_t>(e)];
  std::vector<double> price(static_cast<size_t>(T), 0.0);  // by slot
  std::vector<int32_t> owner(static_cast<size_t>(T), -1);  // by slot
  std::vector<int32_t> heap(static_cast<size_t>(T));       // per expert, slot ids in heap order
  for (int64_t s = 0; s < T; ++s) heap[static_cast<size_t>(s)] = static_cast<int32_t>(s);
  auto sift_down = [&](int e) {
    int32_t* h = heap.data() + off[static_cast<size_t>(e)];
    const int64_t n = cap[static_cast<size_t>(e)];
    int64_t i = 0;
    for (;;) {
      int64_t c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && price[static_cast<size_t>(h[c + 1])] < price[static_cast<size_t>(h[c])]) ++c;
      if (price[static_cast<size_t>(h[c])] >= price[static_cast<size_t>(h[i])]) break;
      std::swap(h[c], h[i]);
      i = c;
    }
  };
  float lo = scores[0], hi = scores[0];
  for (size_t i = 0; i < static_cast<size_t>(T) * E; ++i) {
    lo = std::min(lo, scores[i]);
    hi = std::max(hi, scores[i]);
  }
  const double range = std::max(1e-6, static_cast<double>(hi) - lo);
  const double eps_end = eps_final > 0.0 ? eps_final : 1e-3 * range / T;
  double eps = std::max(eps_end, range / 4.0);
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::deque<int32_t> queue;
  for (;;) {
    // A phase: every token unassigned, prices kept from the previous (coarser) phase.
    std::fill(assigned.begin(), assigned.end(), -1);
    std::fill(owner.begin(), owner.end(), -1);
    queue.clear();
    for (int t = 0; t < T; ++t) queue.push_back(t);
    while (!queue.empty()) {
      const int32_t t = queue.front();
      queue.pop_front();
      const float* s = scores + static_cast<size_t>(t) * E;
      int best = -1;
      double v1 = kNegInf, w = kNegInf;
      for (int e = 0; e < E; ++e) {
        if (cap[static_cast<size_t>(e)] == 0) continue;
        const double v = s[e] - price[static_cast<size_t>(heap[static_cast<size_t>(off[static_cast<size_t>(e)])])];
        if (v > v1) {
          w = v1;
          v1 = v;
          best = e;
        } else if (v > w) {
          w = v;
        }
      }
      const int64_t b0 = off[static_cast<size_t>(best)], nb = cap[static_cast<size_t>(best)];
      if (nb >= 2) {  // the second-cheapest slot of the same expert
        double p2 = price[static_cast<size_t>(heap[static_cast<size_t>(b0 + 1)])];
        if (nb >= 3) p2 = std::min(p2, price[static_cast<size_t>(heap[static_cast<size_t>(b0 + 2)])]);
        w = std::max(w, s[best] - p2);
      }
      if (w == kNegInf) w = v1;  // no competing slot at all
      const int32_t slot = heap[static_cast<size_t>(b0)];
      price[static_cast<size_t>(slot)] += v1 - w + eps;
      const int32_t prev = owner[static_cast<size_t>(slot)];
      owner[static_cast<size_t>(slot)] = t;
      assigned[static_cast<size_t>(t)] = best;
      sift_down(best);
      if (prev >= 0) {
        assigned[static_cast<size_t>(prev)] = -1;
        queue.push_back(prev);
      }
    }
    if (eps <= eps_end) break;
    eps = std::max(eps_end, eps / 4.0);
  }
  return assigned;
}

void BaseRouter::check(const MoeConfig& c, const ConfigCheck& check) {
  check.require(c.k() == 1, "router = \"base\" assigns exactly one expert per token but num_experts_per_tok·granularity = " +
                                std::to_string(c.k()) + "; set num_experts_per_tok = 1 and granularity = 1");
}

void BaseRouter::route(int T, const FfnContext& ctx, Routing& r) {
  softmax_rows(T);  // the affinity P of the balance losses
  if (ctx.training && !ctx.causal) {
    std::vector<int> cap(static_cast<size_t>(E), T / E);
    for (int e = 0; e < T % E; ++e) ++cap[static_cast<size_t>(e)];
    const std::vector<int32_t> a = balanced_assignment(logits.data(), T, E, cap, 0.0);
    for (int t = 0; t < T; ++t) r.expert[static_cast<size_t>(t)] = a[static_cast<size_t>(t)];
  } else {
    parallel_for(static_cast<size_t>(T), [&](size_t t) { select_topk(logits.data() + t * E, r.expert.data() + t); }, 256);
  }
  for (int t = 0; t < T; ++t)
    r.gate[static_cast<size_t>(t)] = sigmoid(logits[static_cast<size_t>(t) * E + r.expert[static_cast<size_t>(t)]]);
}

void BaseRouter::gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const {
  sigmoid_gate_backward(T, r, dgate, dlogits);
}

}  // namespace moe
