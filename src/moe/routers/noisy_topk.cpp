// noisy_topk.cpp — Shazeer et al. 2017, "Outrageously Large Neural Networks": noisy top-k gating
// with the importance and load losses (their Appendix A).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/vmath.h"
#include "moe/routers/routers.h"

namespace moe {

float cv_squared(const float* x, int n) {
  double mean = 0.0, var = 0.0;
  for (int i = 0; i < n; ++i) mean += x[i];
  mean /= n;
  for (int i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= n;
  return static_cast<float>(var / (mean * mean + 1e-10));
}

void cv_squared_backward(const float* x, int n, float dout, float* dx) {
  double mean = 0.0, var = 0.0;
  for (int i = 0; i < n; ++i) mean += x[i];
  mean /= n;
  for (int i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= n;
  const double den = mean * mean + 1e-10;
  for (int i = 0; i < n; ++i)
    dx[i] = static_cast<float>(dout * (2.0 * (x[i] - mean) / n / den - var * 2.0 * mean / n / (den * den)));
}

NoisyTopkRouter::NoisyTopkRouter(const MoeConfig& c) : Router(c), wn({E, d}), dwn({E, d}) {
  if (c.router_init_std > 0.f)
    init_normal(wn.data(), wn.numel(), c.seed, c.layer_id * 64 + 2, 0.f, c.router_init_std);
}

void NoisyTopkRouter::params(std::vector<Param>& out, const std::string& prefix) {
  Router::params(out, prefix);
  out.push_back({prefix + "router.noise_weight", &wn, &dwn});
}

void NoisyTopkRouter::forward(const float* xr, int T, const FfnContext& ctx, Routing& r) {
  training_ = ctx.training;
  raw.resize({T, E});
  sigma.resize({T, E});
  noise.resize({T, E});
  noisy.resize({T, E});
  sgemm(false, true, T, E, d, 1.f, xr, d, wn.data(), d, 0.f, raw.data(), E);
  Router::forward(xr, T, ctx, r);
}

void NoisyTopkRouter::route(int T, const FfnContext& ctx, Routing& r) {
  const bool training = ctx.training;
  const uint64_t step = ctx.step;
  softmax_rows(T);  // P = softmax(clean s) for the balance losses
  const uint64_t stream = (step << 16) | (cfg.layer_id << 4) | 3;
  thr_in_.resize(static_cast<size_t>(T));
  thr_out_.resize(static_cast<size_t>(T));
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* s = logits.data() + t * E;
    float* H = noisy.data() + t * E;
    float* sg = sigma.data() + t * E;
    float* n = noise.data() + t * E;
    for (int e = 0; e < E; ++e) {
      sg[e] = softplus(raw[t * E + e]) + 1e-2f;
      n[e] = training ? rng_normal(cfg.seed, stream, (ctx.token0 + t) * E + e) : 0.f;
      H[e] = s[e] + n[e] * sg[e];
    }
    int32_t* idx = r.expert.data() + t * k;
    float* g = r.gate.data() + t * k;
    select_topk(H, idx);
    for (int i = 0; i < k; ++i) g[i] = H[idx[i]];
    softmax(g, g, k);
    // Thresholds of Shazeer's P(x, i): the k-th largest of H, and the (k+1)-th (best not chosen).
    thr_out_[t] = idx[k - 1];
    int32_t next = -1;
    for (int e = 0; e < E; ++e) {
      if (std::find(idx, idx + k, e) != idx + k) continue;
      if (next < 0 || H[e] > H[next]) next = e;
    }
    thr_in_[t] = next;
  }, 256);
  compute_losses(T, r);
}

void NoisyTopkRouter::compute_losses(int T, const Routing& r) {
  losses_ = {};
  dimportance_.assign(static_cast<size_t>(E), 0.f);
  dload_.assign(static_cast<size_t>(E), 0.f);
  const float coef = cfg.noisy_loss_coef;
  if (coef == 0.f) return;
  std::vector<float> importance(static_cast<size_t>(E), 0.f), load(static_cast<size_t>(E), 0.f);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < k; ++i) importance[r.expert[t * k + i]] += r.gate[t * k + i];
  if (training_ && k < E) {
    // Load_i = Σ_t Φ((s_i − kth_excl(H, i)) / σ_i): smooth estimate of the tokens expert i receives.
    parallel_for(static_cast<size_t>(E), [&](size_t e) {
      double sum = 0.0;
      for (int t = 0; t < T; ++t) {
        const int32_t* idx = r.expert.data() + t * k;
        bool in = std::find(idx, idx + k, static_cast<int32_t>(e)) != idx + k;
        int32_t thr = in ? thr_in_[t] : thr_out_[t];
        float z = (logits[t * E + e] - noisy[t * E + thr]) / sigma[t * E + e];
        sum += normal_cdf(z);
      }
      load[e] = static_cast<float>(sum);
    }, 1);
  } else {  // no noise: the load is the count of tokens
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < k; ++i) load[r.expert[t * k + i]] += 1.f;
  }
  if (distributed(comm)) {  // CV² over the whole batch: the sums of every rank's tokens
    comm->allreduce_sum(importance.data(), importance.size());
    comm->allreduce_sum(load.data(), load.size());
  }
  losses_.importance = coef * cv_squared(importance.data(), E);
  losses_.load = coef * cv_squared(load.data(), E);
  cv_squared_backward(importance.data(), E, coef, dimportance_.data());
  if (training_ && k < E) cv_squared_backward(load.data(), E, coef, dload_.data());
}

void NoisyTopkRouter::gate_backward(int, const Routing&, const float*, float*) const {
  // Not used: backward() below handles the noisy path as a whole.
}

void NoisyTopkRouter::backward(const float* xr, const Routing& r, const float* dgate, float* dlogits, float* dxr) {
  const int T = r.T;
  Tensor dH({T, E}), dsigma({T, E});
  // Gate and importance gradients: g = softmax(H_I).
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    const float* g = r.gate.data() + t * k;
    const int32_t* idx = r.expert.data() + t * k;
    thread_local std::vector<float> dg;
    dg.resize(static_cast<size_t>(k));
    float dot = 0.f;
    for (int i = 0; i < k; ++i) {
      dg[i] = dgate[t * k + i] + dimportance_[idx[i]];
      dot += g[i] * dg[i];
    }
    for (int i = 0; i < k; ++i) dH[t * E + idx[i]] += g[i] * (dg[i] - dot);
  }, 256);
  // Load gradients: through s_i, the threshold entry of H, and σ_i.
  if (training_ && k < E && cfg.noisy_loss_coef != 0.f) {
    parallel_for(static_cast<size_t>(T), [&](size_t t) {
      const int32_t* idx = r.expert.data() + t * k;
      for (int e = 0; e < E; ++e) {
        bool in = std::find(idx, idx + k, e) != idx + k;
        int32_t thr = in ? thr_in_[t] : thr_out_[t];
        const float sg = sigma[t * E + e];
        const float z = (logits[t * E + e] - noisy[t * E + thr]) / sg;
        const float c = dload_[e] * normal_pdf(z) / sg;
        dlogits[t * E + e] += c;
        dH[t * E + thr] -= c;
        dsigma[t * E + e] -= c * z;
      }
    }, 64);
  }
  // H = s + n·σ; σ = softplus(raw) + 1e-2.
  Tensor draw({T, E});
  for (size_t i = 0; i < static_cast<size_t>(T) * E; ++i) {
    dlogits[i] += dH[i];
    const float ds = dsigma[i] + dH[i] * noise[i];
    draw[i] = ds * sigmoid(raw[i]);
  }
  sgemm(true, false, E, d, T, 1.f, dlogits, E, xr, d, 1.f, dw.data(), d);
  sgemm(true, false, E, d, T, 1.f, draw.data(), E, xr, d, 1.f, dwn.data(), d);
  sgemm(false, false, T, d, E, 1.f, dlogits, E, w.data(), d, 1.f, dxr, d);
  sgemm(false, false, T, d, E, 1.f, draw.data(), E, wn.data(), d, 1.f, dxr, d);
}

}  // namespace moe
