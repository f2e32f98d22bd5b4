#include "peer/peer_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>

#include "peer/peer_layer.h"

namespace moe {

void PeerStats::add() {
  const PeerLayer& layer = *layer_;
  if (score.empty()) score.assign(static_cast<size_t>(layer.cfg.n_experts()), 0.0);
  const std::vector<int32_t>& e = layer.experts();
  const std::vector<float>& g = layer.gates();
  for (size_t p = 0; p < e.size(); ++p) score[static_cast<size_t>(e[p])] += g[p];
  pairs += static_cast<int64_t>(e.size());
}

double PeerStats::usage() const {
  if (score.empty()) return 0.0;
  size_t used = 0;
  for (double s : score) used += s > 0.0;
  return static_cast<double>(used) / static_cast<double>(score.size());
}

double PeerStats::unevenness() const {
  double total = 0.0;
  for (double s : score) total += s;
  if (score.empty() || !(total > 0.0)) return 0.0;
  double plogp = 0.0;
  for (double s : score)
    if (s > 0.0) {
      const double z = s / total;
      plogp += z * std::log(z);
    }
  return std::log(static_cast<double>(score.size())) + plogp;
}

nlohmann::json PeerStats::cumulative_share(int points) const {
  nlohmann::json out = nlohmann::json::array();
  if (score.empty() || points < 2) return out;
  std::vector<double> sorted = score;
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  double total = 0.0;
  for (double s : sorted) total += s;
  if (!(total > 0.0)) return out;
  const double n = static_cast<double>(sorted.size());
  double cum = 0.0;
  size_t done = 0;
  int64_t last = 0;
  for (int i = 0; i < points; ++i) {
    const auto r = static_cast<int64_t>(std::llround(std::pow(n, static_cast<double>(i) / (points - 1))));
    if (r <= last) continue;
    for (; done < static_cast<size_t>(r); ++done) cum += sorted[done];
    out.push_back({r, cum / total});
    last = r;
  }
  return out;
}

double PeerStats::top_share(double fraction) const {
  if (score.empty()) return 0.0;
  std::vector<double> sorted = score;
  const auto r = static_cast<size_t>(std::max<double>(1.0, std::round(fraction * static_cast<double>(sorted.size()))));
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<long>(r - 1), sorted.end(), std::greater<double>());
  double top = 0.0, total = 0.0;
  for (size_t i = 0; i < sorted.size(); ++i) (i < r ? top : total) += sorted[i];
  total += top;
  return total > 0.0 ? top / total : 0.0;
}

nlohmann::json PeerStats::to_json() const {
  return {{"usage", usage()}, {"unevenness", unevenness()}, {"experts", score.size()}, {"pairs", pairs}};
}

nlohmann::json PeerStats::report() const {
  nlohmann::json j = to_json();
  j["query_bn"] = layer_->cfg.query_bn;
  j["cumulative_share"] = cumulative_share(64);
  j["top_0.1%"] = top_share(0.001);
  j["top_1%"] = top_share(0.01);
  j["top_10%"] = top_share(0.1);
  return j;
}

std::string PeerStats::summary() const {
  char buf[64];
  std::snprintf(buf, sizeof buf, "usage %.1f%% unevenness %.2f", 100.0 * usage(), unevenness());
  return buf;
}

std::string PeerStats::describe() const {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%zu experts, %lld retrievals: usage %.1f%%  unevenness %.3f (uniform 0, max log N = %.2f)\n"
                "  share of the gate held by the most used 0.1%% / 1%% / 10%% of the experts: %.0f%% / %.0f%% / %.0f%%\n",
                score.size(), static_cast<long long>(pairs), 100.0 * usage(), unevenness(),
                std::log(static_cast<double>(score.size())), 100.0 * top_share(0.001), 100.0 * top_share(0.01),
                100.0 * top_share(0.1));
  return buf;
}

}  // namespace moe
