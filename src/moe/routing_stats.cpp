#include "moe/routing_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/vmath.h"
#include "moe/moe_layer.h"

namespace moe {

void RoutingStats::add() {
  const MoeLayer& m = *layer_;
  const int seq_len = m.seq_len();
  const Routing& r = m.routing();
  const DispatchPlan& p = m.plan();
  const int T = r.T, k = r.k;
  if (E == 0) {
    E = m.cfg.n_experts();
    routed.assign(static_cast<size_t>(E), 0.0);
    importance.assign(static_cast<size_t>(E), 0.0);
  }
  tokens += T;
  dropped += p.dropped;
  for (int e = 0; e < E; ++e) routed[static_cast<size_t>(e)] += p.routed[static_cast<size_t>(e)];
  for (size_t j = 0; j < r.expert.size(); ++j)
    if (r.expert[j] >= 0) importance[static_cast<size_t>(r.expert[j])] += r.gate[j];
  for (int t = 0; t < T; ++t) {
    bool any = false;
    for (int i = 0; i < k; ++i) any |= p.pair_row[static_cast<size_t>(t) * k + i] >= 0;
    unrouted += !any;
  }
  const Tensor& s = m.router->logits;
  std::vector<float> q(static_cast<size_t>(E));
  for (int t = 0; t < T; ++t) {
    softmax(s.data() + static_cast<size_t>(t) * E, q.data(), E);
    for (float v : q) entropy -= v > 0.f ? v * std::log(static_cast<double>(v)) : 0.0;
  }
  for (int t = 1; t < T; ++t) {
    if (seq_len > 0 && t % seq_len == 0) continue;
    const int32_t a = r.first(t), b = r.first(t - 1);
    if (a < 0 || b < 0) continue;
    same += a == b;
    ++pairs;
  }
  const MoeLosses& L = m.losses();
  aux += L.balance.aux;
  z += L.balance.z;
  rl += L.router.rl;
  loss_terms += L.total();
  ++forwards;
  if (m.comm()) rows_here += m.exchange().rows_received();
}

void RoutingStats::reduce(Comm& comm) {
  std::vector<int64_t> counts = {tokens, dropped, unrouted, same, pairs};
  comm.allreduce_sum(counts.data(), counts.size());
  tokens = counts[0];
  dropped = counts[1];
  unrouted = counts[2];
  same = counts[3];
  pairs = counts[4];
  std::vector<double> sums(routed);
  sums.insert(sums.end(), importance.begin(), importance.end());
  sums.push_back(entropy);
  comm.allreduce_sum(sums.data(), sums.size());
  std::copy(sums.begin(), sums.begin() + E, routed.begin());
  std::copy(sums.begin() + E, sums.begin() + 2 * E, importance.begin());
  entropy = sums.back();
  std::vector<int64_t> rows(static_cast<size_t>(comm.size()));
  comm.allgather(&rows_here, sizeof rows_here, rows.data());
  rank_rows.assign(rows.begin(), rows.end());
}

static void cv_max(const std::vector<double>& x, double& cv, double& max_mean) {
  double sum = 0.0, mx = 0.0;
  for (double v : x) {
    sum += v;
    mx = std::max(mx, v);
  }
  const double n = static_cast<double>(x.size()), mean = sum / n;
  double var = 0.0;
  for (double v : x) var += (v - mean) * (v - mean);
  var /= n;
  cv = mean > 0.0 ? std::sqrt(var) / mean : 0.0;
  max_mean = mean > 0.0 ? mx / mean : 0.0;
}

nlohmann::json RoutingStats::to_json() const {
  double total = 0.0;
  int used = 0;
  for (double v : routed) {
    total += v;
    used += v > 0.0;
  }
  std::vector<double> load(routed.size());
  for (size_t e = 0; e < routed.size(); ++e) load[e] = total > 0.0 ? routed[e] / total : 0.0;
  double cv = 0.0, max_mean = 0.0, cv_imp = 0.0, imp_max_mean = 0.0;
  cv_max(load, cv, max_mean);
  cv_max(importance, cv_imp, imp_max_mean);
  const double f = forwards > 0 ? 1.0 / forwards : 0.0;
  nlohmann::json j = {{"load", load},
          {"cv", cv},
          {"max_mean", max_mean},
          {"cv_importance", cv_imp},
          {"dropped", total > 0.0 ? static_cast<double>(dropped) / total : 0.0},
          {"unrouted", tokens ? static_cast<double>(unrouted) / static_cast<double>(tokens) : 0.0},
          {"experts_used", E ? static_cast<double>(used) / E : 0.0},
          {"entropy", tokens ? entropy / static_cast<double>(tokens) : 0.0},
          {"consecutive_same", pairs ? static_cast<double>(same) / static_cast<double>(pairs) : 0.0},
          {"random_same", E ? 1.0 / E : 0.0},
          {"aux", aux * f},
          {"z", z * f},
          {"loss_terms", loss_terms * f}};
  if (layer_->wants_reward()) j["rl"] = rl * f;
  if (!rank_rows.empty()) j["rank_rows"] = rank_rows;
  return j;
}

std::string RoutingStats::summary() const {
  const nlohmann::json j = to_json();
  char buf[64];
  std::snprintf(buf, sizeof buf, "max/mean %.2f cv %.2f", j["max_mean"].get<double>(), j["cv"].get<double>());
  return buf;
}

std::string RoutingStats::describe() const {
  const nlohmann::json L = to_json();
  const std::vector<double> load = L["load"].get<std::vector<double>>();
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "CV %.3f  max/mean %.2f  CV(importance) %.3f  dropped %.1f%%  unrouted %.1f%%  experts used %.0f%%\n"
                "         entropy %.3f (uniform %.3f)  consecutive same %.3f (random %.3f)\n",
                L["cv"].get<double>(), L["max_mean"].get<double>(), L["cv_importance"].get<double>(),
                100.0 * L["dropped"].get<double>(), 100.0 * L["unrouted"].get<double>(),
                100.0 * L["experts_used"].get<double>(), L["entropy"].get<double>(),
                std::log(static_cast<double>(load.size())), L["consecutive_same"].get<double>(),
                L["random_same"].get<double>());
  std::string out = buf;
  double mx = 0.0;
  for (double v : load) mx = std::max(mx, v);
  if (load.size() <= 64)
    for (size_t e = 0; e < load.size(); ++e) {
      const int bar = mx > 0.0 ? static_cast<int>(40.0 * load[e] / mx + 0.5) : 0;
      std::snprintf(buf, sizeof buf, "  %3zu %5.1f%% %s\n", e, 100.0 * load[e], std::string(static_cast<size_t>(bar), '#').c_str());
      out += buf;
    }
  return out;
}

}  // namespace moe
