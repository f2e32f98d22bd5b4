#include "moe/routers/router.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/topk.h"
#include "core/vmath.h"
#include "moe/routers/routers.h"

namespace moe {

Router::Router(const MoeConfig& c)
    : cfg(c), traits(router_traits(c.router)), E(c.n_experts()), k(c.k()), d(c.hidden_size), w({E, d}), dw({E, d}) {
  if (c.router_init_std > 0.f)
    init_normal(w.data(), w.numel(), c.seed, c.layer_id * 64 + 1, 0.f, c.router_init_std);
  if (c.entry_steps > 0) entry_offset = Tensor({E});
}

void Router::after_step_entry() {
  if (entry_offset.empty()) return;
  const float rise = MoeConfig::kEntryOffset / static_cast<float>(cfg.entry_steps);
  for (int e = 0; e < E; ++e)
    if (entry_offset[e] < 0.f) entry_offset[e] = std::min(0.f, entry_offset[e] + rise);
}

namespace {

// One entry per router kind, in the order of EnumNames<RouterKind>.
struct RouterEntry {
  RouterTraits traits;
  std::unique_ptr<Router> (*make)(const MoeConfig&);
  void (*check)(const MoeConfig&, const ConfigCheck&);
};

template <class R>
constexpr RouterEntry entry() {
  return {R::kTraits, [](const MoeConfig& c) -> std::unique_ptr<Router> { return std::make_unique<R>(c); }, &R::check};
}

constexpr RouterEntry kRouters[] = {
    entry<TopkSoftmaxRouter>(), entry<SoftmaxTopkRouter>(), entry<NoisyTopkRouter>(),
    entry<SigmoidBiasRouter>(), entry<HashRouter>(),        entry<BaseRouter>(),
    entry<SBaseRouter>(),       entry<ReinforceRouter>(),   entry<ExpertChoiceRouter>()};
static_assert(std::size(kRouters) == EnumNames<RouterKind>::names.size(), "one entry per router kind");

const RouterEntry& router_entry(RouterKind k) { return kRouters[static_cast<size_t>(k)]; }

}  // namespace

RouterTraits router_traits(RouterKind k) { return router_entry(k).traits; }

RouterKind router_of_gating(Gating g) {
  for (size_t i = 0; i < std::size(kRouters); ++i)
    if (g != Gating::other && kRouters[i].traits.gating == g) return static_cast<RouterKind>(i);
  fail("router_of_gating: no router computes this gate function");
}

void check_router_config(const MoeConfig& c, const ConfigCheck& check) {
  check.require(c.noisy_loss_coef == 0.f || c.router == RouterKind::noisy_topk,
                "noisy_loss_coef is set but router = \"" + std::string(name_of(c.router)) +
                    "\"; the importance and load losses need router = \"noisy_topk\"");
  router_entry(c.router).check(c, check);
}

std::unique_ptr<Router> Router::create(const MoeConfig& c) { return router_entry(c.router).make(c); }

void Router::forward(const float* xr, int T, const FfnContext& ctx, Routing& r) {
  logits.resize({T, E});
  prob.resize({T, E});
  if (w.empty()) {
    logits.zero();  // a router without W_r (hash): s = 0
  } else {
    sgemm(false, true, T, E, d, 1.f, xr, d, w.data(), d, 0.f, logits.data(), E);
  }
  if (!entry_offset.empty())
    for (int t = 0; t < T; ++t)
      for (int e = 0; e < E; ++e) logits[static_cast<size_t>(t) * E + e] += entry_offset[e];
  r.T = T;
  r.k = k;
  r.expert.resize(static_cast<size_t>(T) * k);
  r.gate.resize(static_cast<size_t>(T) * k);
  r.expert_slots = false;
  route(T, ctx, r);
}

void Router::backward(const float* xr, const Routing& r, const float* dgate, float* dlogits, float* dxr) {
  gate_backward(r.T, r, dgate, dlogits);
  if (w.empty()) return;  // no W_r: nothing to differentiate
  sgemm(true, false, E, d, r.T, 1.f, dlogits, E, xr, d, 1.f, dw.data(), d);
  sgemm(false, false, r.T, d, E, 1.f, dlogits, E, w.data(), d, 1.f, dxr, d);
}

void Router::prob_backward(const float* dprob, float* dlogits, int T) const {
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* p = prob.data() + t * E;
    const float* dp = dprob + t * E;
    float dot = 0.f;
    for (int e = 0; e < E; ++e) dot += p[e] * dp[e];
    for (int e = 0; e < E; ++e) dlogits[t * E + e] += p[e] * (dp[e] - dot);
  }, 256);
}

void Router::params(std::vector<Param>& out, const std::string& prefix) {
  out.push_back({prefix + "router.weight", &w, &dw});
}

void Router::softmax_rows(int T) {
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    softmax(logits.data() + t * E, prob.data() + t * E, E);
  }, 256);
}

void Router::select_topk(const float* scores, int32_t* idx) const {
  thread_local std::vector<float> masked;
  const float* s = scores;
  if (cfg.n_group > 1 && cfg.topk_group < cfg.n_group) {
    // Group-limited routing (DeepSeek-V2/V3): a group's score is the sum of its top-2 scores; keep the
    // best topk_group groups and mask the rest to −∞ before the top-k.
    const int G = cfg.n_group, per = E / G, take = std::min(2, per);
    thread_local std::vector<float> gscore;
    thread_local std::vector<int32_t> gorder;
    gscore.assign(static_cast<size_t>(G), 0.f);
    for (int g = 0; g < G; ++g) {
      float b1 = -std::numeric_limits<float>::infinity(), b2 = b1;
      for (int j = 0; j < per; ++j) {
        float v = scores[g * per + j];
        if (v > b1) { b2 = b1; b1 = v; } else if (v > b2) { b2 = v; }
      }
      gscore[static_cast<size_t>(g)] = take == 2 ? b1 + b2 : b1;
    }
    gorder.resize(static_cast<size_t>(G));
    std::iota(gorder.begin(), gorder.end(), 0);
    std::partial_sort(gorder.begin(), gorder.begin() + cfg.topk_group, gorder.end(), [&](int32_t a, int32_t b) {
      return gscore[a] > gscore[b] || (gscore[a] == gscore[b] && a < b);
    });
    masked.assign(static_cast<size_t>(E), -std::numeric_limits<float>::infinity());
    for (int gi = 0; gi < cfg.topk_group; ++gi) {
      int g = gorder[static_cast<size_t>(gi)];
      std::copy(scores + g * per, scores + (g + 1) * per, masked.begin() + g * per);
    }
    s = masked.data();
  }
  topk_desc(s, E, k, idx);
}

void Router::restricted_softmax_backward(int T, const Routing& r, const float* dgate, float* dlogits) const {
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* g = r.gate.data() + t * r.k;
    const float* dg = dgate + t * r.k;
    float dot = 0.f;
    for (int i = 0; i < r.k; ++i) dot += g[i] * dg[i];
    for (int i = 0; i < r.k; ++i) dlogits[t * E + r.expert[t * r.k + i]] += g[i] * (dg[i] - dot);
  }, 256);
}

void Router::sigmoid_gate_backward(int T, const Routing& r, const float* dgate, float* dlogits) const {
  for (size_t j = 0; j < static_cast<size_t>(T) * r.k; ++j) {
    const float g = r.gate[j];
    if (r.expert[j] >= 0) dlogits[j / r.k * E + r.expert[j]] += dgate[j] * g * (1.f - g);
  }
}

void Router::softmax_slots_backward(int T, const Routing& r, const float* dslot, float* dlogits) const {
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    thread_local std::vector<float> dp;
    dp.assign(static_cast<size_t>(E), 0.f);
    for (int i = 0; i < r.k; ++i) {
      const int32_t e = r.expert[t * r.k + i];
      if (e >= 0) dp[static_cast<size_t>(e)] += dslot[t * r.k + i];
    }
    softmax_backward(prob.data() + t * E, dp.data(), dp.data(), E);
    for (int e = 0; e < E; ++e) dlogits[t * E + e] += dp[static_cast<size_t>(e)];
  }, 256);
}

}  // namespace moe
