#include "eval/charts.h"

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <vector>

namespace moe {

std::string routing_svg(const nlohmann::json& all_layers, const std::string& title) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& L : all_layers)
    if (L.is_object() && L.contains("load")) layers.push_back(L);
  if (layers.empty()) return "";
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

}  // namespace moe
