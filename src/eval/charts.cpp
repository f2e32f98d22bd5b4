#include "eval/charts.h"

#include <algorithm>
#include <cmath>
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

const std::vector<std::string>& chart_palette() {
  static const std::vector<std::string> p = {"#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377",
                                             "#bbbbbb", "#222255", "#225555", "#666633", "#663333", "#555555"};
  return p;
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

namespace {

std::string esc(const std::string& s) { return xml_escape(s); }

// The opening of a chart that scales to its container: the <svg> element, a white background and the
// title.
std::string svg_open(int W, int H, const std::string& title) {
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 " << W << " " << H << "\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\" aria-label=\"" << esc(title) << "\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2 << "\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">" << esc(title) << "</text>\n";
  return o.str();
}

std::string num(double v) {
  char b[32];
  if (v != 0.0 && (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-3))
    std::snprintf(b, sizeof b, "%.3g", v);
  else
    std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

// An axis: its range in data units (log10 units on a log axis) and its ticks.
struct Axis {
  bool log = false;
  double lo = 0, hi = 1;
  std::vector<double> ticks;  // in data units
  double map(double v, double a, double b) const {  // data value to pixel between a and b
    const double t = log ? std::log10(v) : v;
    return a + (b - a) * (t - lo) / (hi - lo);
  }
};

Axis make_axis(const std::vector<double>& values, bool log) {
  Axis ax;
  ax.log = log;
  std::vector<double> t;
  for (double x : values)
    if (std::isfinite(x) && (!log || x > 0)) t.push_back(log ? std::log10(x) : x);
  if (t.empty()) t = {0.0, 1.0};
  double lo = *std::min_element(t.begin(), t.end()), hi = *std::max_element(t.begin(), t.end());
  if (hi - lo < 1e-12) {
    const double pad = log ? 0.5 : (std::fabs(lo) > 0 ? 0.1 * std::fabs(lo) : 1.0);
    lo -= pad;
    hi += pad;
  }
  const double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  ax.lo = lo;
  ax.hi = hi;
  if (log) {
    const bool few = hi - lo < 2.5;  // under ~2 decades: 1, 2, 5 in each
    for (int e = static_cast<int>(std::floor(lo)); e <= static_cast<int>(std::ceil(hi)); ++e)
      for (double m : few ? std::vector<double>{1, 2, 5} : std::vector<double>{1}) {
        const double v = m * std::pow(10.0, e);
        if (std::log10(v) >= lo && std::log10(v) <= hi) ax.ticks.push_back(v);
      }
    if (ax.ticks.size() < 2) {  // less than a decade: plain ticks in data units
      Axis lin = make_axis({std::pow(10.0, lo + pad), std::pow(10.0, hi - pad)}, false);
      for (double x : lin.ticks)
        if (x > 0) ax.ticks.push_back(x);
    }
    return ax;
  }
  const double span = hi - lo, raw = span / 5.0, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  for (double x = std::ceil(lo / step) * step; x <= hi + 1e-9 * step; x += step) ax.ticks.push_back(std::fabs(x) < 1e-12 * step ? 0.0 : x);
  return ax;
}

}  // namespace

std::string line_chart_svg(const LineChart& c) {
  std::vector<double> xs, ys;
  for (const ChartSeries& s : c.series) {
    xs.insert(xs.end(), s.x.begin(), s.x.end());
    ys.insert(ys.end(), s.y.begin(), s.y.end());
  }
  const Axis ax = make_axis(xs, c.logx), ay = make_axis(ys, c.logy);

  // Legend entries per row: three, or fewer when the names are long.
  size_t longest = 0;
  for (const ChartSeries& s : c.series) longest = std::max(longest, s.name.size());
  const int per_row = longest > 40 ? 1 : longest > 22 ? 2 : 3;
  const int legend_rows = static_cast<int>((c.series.size() + static_cast<size_t>(per_row) - 1) / static_cast<size_t>(per_row));
  const int W = c.width, H = c.height + 16 * legend_rows, left = 62, right = 16, top = 30;  // the legend adds rows
  const int bottom = 44 + 16 * legend_rows;
  const double x0 = left, x1 = W - right, y0 = H - bottom, y1 = top;
  std::ostringstream o;
  o << svg_open(W, H, c.title);
  char buf[512];
  for (double t : ax.ticks) {
    const double px = ax.map(t, x0, x1);
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", px, y0, px, y1, px, y0 + 14, num(t).c_str());
    o << buf;
  }
  for (double t : ay.ticks) {
    const double py = ay.map(t, y0, y1);
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", x0, py, x1, py, x0 - 4, py + 4, num(t).c_str());
    o << buf;
  }
  std::snprintf(buf, sizeof buf, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", x0, y1,
                x1 - x0, y0 - y1);
  o << buf;
  o << "<text x=\"" << (x0 + x1) / 2 << "\" y=\"" << y0 + 30 << "\" text-anchor=\"middle\">" << esc(c.xlabel)
    << (c.logx ? " (log scale)" : "") << "</text>\n";
  o << "<text transform=\"translate(14 " << (y0 + y1) / 2 << ") rotate(-90)\" text-anchor=\"middle\">" << esc(c.ylabel)
    << (c.logy ? " (log scale)" : "") << "</text>\n";
  const auto& pal = chart_palette();
  for (size_t si = 0; si < c.series.size(); ++si) {
    const ChartSeries& s = c.series[si];
    const std::string& col = pal[static_cast<size_t>(s.color >= 0 ? s.color : static_cast<int>(si)) % pal.size()];
    std::string path;
    bool pen = false;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      const bool ok = std::isfinite(s.x[i]) && std::isfinite(s.y[i]) && (!c.logx || s.x[i] > 0) && (!c.logy || s.y[i] > 0);
      if (!ok) {
        pen = false;
        continue;
      }
      std::snprintf(buf, sizeof buf, "%c%.1f %.1f ", pen ? 'L' : 'M', ax.map(s.x[i], x0, x1), ay.map(s.y[i], y0, y1));
      path += buf;
      pen = true;
    }
    if (s.line && !path.empty())
      o << "<path d=\"" << path << "\" fill=\"none\" stroke=\"" << col << "\" stroke-width=\"1.8\""
        << (s.dashed ? " stroke-dasharray=\"5 3\"" : "") << "/>\n";
    if (s.markers)
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i]) || (c.logx && s.x[i] <= 0) || (c.logy && s.y[i] <= 0)) continue;
        std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.2\" fill=\"%s\"><title>%s: %s, %s</title></circle>\n",
                      ax.map(s.x[i], x0, x1), ay.map(s.y[i], y0, y1), col.c_str(), esc(s.name).c_str(), num(s.x[i]).c_str(),
                      num(s.y[i]).c_str());
        o << buf;
      }
    // Legend: per_row entries per row under the plot.
    const size_t pr = static_cast<size_t>(per_row);
    const double lx = 12 + static_cast<double>(si % pr) * (W - 24) / per_row, ly = y0 + 46 + 16 * static_cast<double>(si / pr);
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2.5\"%s/>"
                  "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", lx, ly - 4, lx + 18, ly - 4, col.c_str(),
                  s.dashed ? " stroke-dasharray=\"5 3\"" : "", lx + 22, ly, esc(s.name).c_str());
    o << buf;
  }
  o << "</svg>\n";
  return o.str();
}

std::string heatmap_svg(const Heatmap& h) {
  const size_t rows = h.cells.size(), cols = rows ? h.cells[0].size() : 0;
  double vmax = h.vmax;
  if (vmax <= 0)
    for (const auto& r : h.cells)
      for (double v : r) vmax = std::max(vmax, v);
  if (vmax <= 0) vmax = 1.0;
  const int W = h.width, H = h.height, left = 52, right = 70, top = 30, bottom = 40;
  const double x0 = left, x1 = W - right, y0 = top, y1 = H - bottom;
  std::ostringstream o;
  char buf[512];
  o << svg_open(W, H, h.title);
  // white → blue (#4477aa) → dark red (#aa3333) at vmax
  auto color = [&](double v) {
    const double t = std::clamp(v / vmax, 0.0, 1.0);
    double r, g, b;
    if (t < 0.5) {
      const double u = t / 0.5;
      r = 255 + (0x44 - 255) * u, g = 255 + (0x77 - 255) * u, b = 255 + (0xaa - 255) * u;
    } else {
      const double u = (t - 0.5) / 0.5;
      r = 0x44 + (0xaa - 0x44) * u, g = 0x77 + (0x33 - 0x77) * u, b = 0xaa + (0x33 - 0xaa) * u;
    }
    std::snprintf(buf, sizeof buf, "#%02x%02x%02x", static_cast<int>(r), static_cast<int>(g), static_cast<int>(b));
    return std::string(buf);
  };
  const double cw = cols ? (x1 - x0) / static_cast<double>(cols) : 0, ch = rows ? (y1 - y0) / static_cast<double>(rows) : 0;
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols && c < h.cells[r].size(); ++c) {
      const std::string col = color(h.cells[r][c]);
      std::snprintf(buf, sizeof buf, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"/>\n", x0 + static_cast<double>(c) * cw,
                    y0 + static_cast<double>(r) * ch, cw + 0.3, ch + 0.3, col.c_str());
      o << buf;
    }
  std::snprintf(buf, sizeof buf, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", x0, y0,
                x1 - x0, y1 - y0);
  o << buf;
  // Row labels (as many as fit), column labels (about six).
  const size_t rstep = std::max<size_t>(1, static_cast<size_t>(std::ceil(12.0 / std::max(ch, 1e-9))));  // labels 12 px apart
  for (size_t r = 0; r < rows; r += rstep) {
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%zu</text>\n", x0 - 4, y0 + (static_cast<double>(r) + 0.5) * ch + 4, r);
    o << buf;
  }
  const size_t cstep = std::max<size_t>(1, cols / 6);
  for (size_t c = 0; c < cols && c < h.x.size(); c += cstep) {
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x0 + (static_cast<double>(c) + 0.5) * cw, y1 + 14,
                  num(h.x[c]).c_str());
    o << buf;
  }
  o << "<text x=\"" << (x0 + x1) / 2 << "\" y=\"" << y1 + 30 << "\" text-anchor=\"middle\">" << esc(h.xlabel) << "</text>\n";
  o << "<text transform=\"translate(14 " << (y0 + y1) / 2 << ") rotate(-90)\" text-anchor=\"middle\">" << esc(h.ylabel) << "</text>\n";
  // Color bar with its scale and the reference mark.
  const double bx = x1 + 14, bw = 12;
  for (int i = 0; i < 50; ++i) {
    const double v = vmax * (49 - i) / 49.0;
    std::snprintf(buf, sizeof buf, "<rect x=\"%.1f\" y=\"%.2f\" width=\"%.1f\" height=\"%.2f\" fill=\"%s\"/>\n", bx,
                  y0 + i * (y1 - y0) / 50.0, bw, (y1 - y0) / 50.0 + 0.3, color(v).c_str());
    o << buf;
  }
  std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\">%s</text><text x=\"%.1f\" y=\"%.1f\">0</text>\n", bx + bw + 3, y0 + 8,
                num(vmax).c_str(), bx + bw + 3, y1);
  o << buf;
  if (h.reference > 0 && h.reference < vmax) {
    const double ry = y1 - (y1 - y0) * h.reference / vmax;
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\" stroke-width=\"1.5\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", bx - 2, ry, bx + bw + 2, ry, bx + bw + 3, ry + 4, "1/E");
    o << buf;
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace moe
