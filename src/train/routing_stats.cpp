#include "train/routing_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>

#include "core/vmath.h"

namespace moe {

void RoutingStats::add(const MoeLayer& m, int seq_len) {
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
  loss_terms += L.total();
  ++forwards;
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
  return {{"load", load},
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
}

std::string routing_svg(const nlohmann::json& layers, const std::string& title) {
  const int n = static_cast<int>(layers.size()), cols = std::min(n, 2), rows = (n + cols - 1) / std::max(cols, 1);
  const int pw = 420, ph = 230, top = 40;
  const int W = std::max(cols, 1) * pw, H = top + rows * ph;
  std::ostringstream o;
  char buf[512];
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">" << title << "</text>\n";
  for (int li = 0; li < n; ++li) {
    const auto& L = layers[static_cast<size_t>(li)];
    const std::vector<double> load = L["load"].get<std::vector<double>>();
    const int E = static_cast<int>(load.size());
    const int x0 = (li % cols) * pw + 50, y0 = top + (li / cols) * ph + 30, w = pw - 70, h = ph - 70;
    double ymax = 0.0;
    for (double v : load) ymax = std::max(ymax, v);
    ymax = std::max(ymax, 1.5 / std::max(E, 1)) * 1.1;
    std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"%d\">layer %d: CV %.2f, max/mean %.2f, entropy %.2f</text>\n", x0,
                  y0 - 10, L.value("layer", li), L["cv"].get<double>(), L["max_mean"].get<double>(),
                  L["entropy"].get<double>());
    o << buf;
    std::snprintf(buf, sizeof buf, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", x0, y0 + h, x0 + w, y0 + h);
    o << buf;
    std::snprintf(buf, sizeof buf, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", x0, y0, x0, y0 + h);
    o << buf;
    for (int tick = 0; tick <= 2; ++tick) {
      const double v = ymax * tick / 2.0;
      const int y = y0 + h - static_cast<int>(h * tick / 2.0);
      std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.1f%%</text>\n", x0 - 4, y + 4, 100.0 * v);
      o << buf;
    }
    const double bw = static_cast<double>(w) / std::max(E, 1);
    for (int e = 0; e < E; ++e) {
      const double bh = h * load[static_cast<size_t>(e)] / ymax;
      std::snprintf(buf, sizeof buf, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#4477aa\"/>\n",
                    x0 + e * bw + 0.1 * bw, y0 + h - bh, std::max(0.8 * bw, 0.5), bh);
      o << buf;
    }
    if (E <= 32)
      for (int e = 0; e < E; ++e) {
        std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", x0 + (e + 0.5) * bw,
                      y0 + h + 13, e);
        o << buf;
      }
    const double yu = y0 + h - h * (1.0 / std::max(E, 1)) / ymax;  // uniform load 1/E
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#cc3311\" stroke-dasharray=\"4 3\"/>\n"
                  "<text x=\"%d\" y=\"%.1f\" fill=\"#cc3311\" text-anchor=\"end\">1/E</text>\n",
                  x0, yu, x0 + w, yu, x0 + w, yu - 3);
    o << buf;
    std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">expert</text>\n", x0 + w / 2, y0 + h + 28);
    o << buf;
  }
  o << "</svg>\n";
  return o.str();
}

void PeerStats::add(const PeerLayer& layer) {
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

}  // namespace moe
