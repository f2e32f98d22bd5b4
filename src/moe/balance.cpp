#include "moe/balance.h"

#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "core/vmath.h"

namespace moe {

bool balance_uses_prob(const MoeConfig& c) {
  return c.router_aux_loss_coef > 0.f || c.expert_loss_coef > 0.f || c.device_loss_coef > 0.f || c.seq_aux_loss_coef > 0.f;
}

BalanceLosses balance_losses(const MoeConfig& c, const float* prob, const float* logits, const Routing& r,
                             int seq_len, float* dprob, float* dlogits, Comm* comm) {
  // k: experts per token of the config (expert choice routes k·T pairs in r.k = E slots per token).
  const int T = r.T, k = c.k(), E = c.n_experts();
  const int ranks = distributed(comm) ? comm->size() : 1;
  const double Tg = static_cast<double>(T) * ranks;  // tokens of the whole batch (every rank has T)
  BalanceLosses out;
  // Per-token coefficient of P_{t,i} in the summed loss: the loss is linear in P given the counts.
  std::vector<double> coef(static_cast<size_t>(E), 0.0);
  if (c.router_aux_loss_coef > 0.f || c.expert_loss_coef > 0.f || c.device_loss_coef > 0.f) {
    std::vector<double> count(static_cast<size_t>(E), 0.0), pbar(static_cast<size_t>(E), 0.0);
    for (size_t j = 0; j < r.expert.size(); ++j)
      if (r.expert[j] >= 0) count[r.expert[j]] += 1.0;
    for (int t = 0; t < T; ++t)
      for (int e = 0; e < E; ++e) pbar[e] += prob[static_cast<size_t>(t) * E + e];
    if (ranks > 1) {  // the whole batch's counts and Σ P, in one message
      std::vector<double> both(count);
      both.insert(both.end(), pbar.begin(), pbar.end());
      comm->allreduce_sum(both.data(), both.size());
      std::copy(both.begin(), both.begin() + E, count.begin());
      std::copy(both.begin() + E, both.end(), pbar.begin());
    }
    for (int e = 0; e < E; ++e) pbar[e] /= Tg;
    double aux = 0.0, expert = 0.0;
    for (int e = 0; e < E; ++e) {
      const double f_switch = count[e] / (Tg * k);  // Switch f_i
      const double f_ds = E * f_switch;             // DeepSeek f_i = E·count/(k·T)
      aux += static_cast<double>(c.router_aux_loss_coef) * E * f_switch * pbar[e];
      expert += c.expert_loss_coef * f_ds * pbar[e];
      coef[e] += (static_cast<double>(c.router_aux_loss_coef) * E * f_switch + c.expert_loss_coef * f_ds) / Tg;
    }
    out.aux = static_cast<float>(aux);
    out.expert = static_cast<float>(expert);
    if (c.device_loss_coef > 0.f) {
      const int D = c.n_device_groups(), per = E / D;
      double dev = 0.0;
      for (int g = 0; g < D; ++g) {
        double f = 0.0, p = 0.0;
        for (int j = 0; j < per; ++j) {
          f += E * count[g * per + j] / (Tg * k);
          p += pbar[g * per + j];
        }
        f /= per;
        dev += c.device_loss_coef * f * p;
        for (int j = 0; j < per; ++j) coef[g * per + j] += c.device_loss_coef * f / Tg;
      }
      out.device = static_cast<float>(dev);
    }
    if (dprob)
      parallel_for(static_cast<size_t>(T), [&](size_t t) {
        for (int e = 0; e < E; ++e) dprob[t * E + e] += static_cast<float>(coef[e]);
      }, 256);
  }
  if (c.seq_aux_loss_coef > 0.f) {
    const int L = seq_len > 0 ? seq_len : T, B = T / L;
    const double Bg = static_cast<double>(B) * ranks;  // sequences of the whole batch
    double seq = 0.0;
    std::vector<double> f(static_cast<size_t>(E)), pbar(static_cast<size_t>(E));
    for (int b = 0; b < B; ++b) {
      std::fill(f.begin(), f.end(), 0.0);
      std::fill(pbar.begin(), pbar.end(), 0.0);
      for (int t = b * L; t < (b + 1) * L; ++t) {
        for (int i = 0; i < r.k; ++i)
          if (r.expert[t * r.k + i] >= 0) f[r.expert[t * r.k + i]] += E / (static_cast<double>(k) * L);
        for (int e = 0; e < E; ++e) pbar[e] += static_cast<double>(prob[static_cast<size_t>(t) * E + e]) / L;
      }
      for (int e = 0; e < E; ++e) seq += c.seq_aux_loss_coef * f[e] * pbar[e] / Bg;
      if (dprob)
        for (int t = b * L; t < (b + 1) * L; ++t)
          for (int e = 0; e < E; ++e)
            dprob[static_cast<size_t>(t) * E + e] += static_cast<float>(c.seq_aux_loss_coef * f[e] / (static_cast<double>(L) * Bg));
    }
    if (ranks > 1) comm->allreduce_sum(&seq, 1);
    out.seq = static_cast<float>(seq);
  }
  if (c.router_z_loss_coef > 0.f) {
    std::vector<float> lse(static_cast<size_t>(T));
    parallel_for(static_cast<size_t>(T), [&](size_t t) { lse[t] = logsumexp(logits + t * E, E); }, 256);
    double z = 0.0;
    for (int t = 0; t < T; ++t) z += static_cast<double>(lse[t]) * lse[t];
    if (ranks > 1) comm->allreduce_sum(&z, 1);
    out.z = static_cast<float>(c.router_z_loss_coef * z / Tg);
    if (dlogits)
      parallel_for(static_cast<size_t>(T), [&](size_t t) {
        const float* s = logits + t * E;
        const float scale = 2.f * c.router_z_loss_coef * lse[t] / static_cast<float>(Tg);
        for (int e = 0; e < E; ++e) dlogits[t * E + e] += scale * exp_approx(s[e] - lse[t]);
      }, 256);
  }
  return out;
}

}  // namespace moe
