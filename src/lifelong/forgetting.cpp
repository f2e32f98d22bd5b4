#include "lifelong/forgetting.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/files.h"
#include "eval/charts.h"

namespace moe {

using json = nlohmann::json;

namespace {

std::string fmt(double v, const char* f = "%.3f") {
  if (!std::isfinite(v)) return "";
  char b[32];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// The matrices as SVG: one panel per strategy, rows the phases, columns the corpora; a cell shows the
// loss and, below it, the forgetting, colored by the forgetting (green: less than none, red: more).
std::string matrices_svg(const std::vector<ForgettingMatrix>& ms, const std::vector<std::string>& corpora) {
  const size_t P = corpora.size();
  const int cell_w = 78, cell_h = 40, left = 96, top = 46, gap = 40;
  const int panel_w = left + cell_w * static_cast<int>(P);
  // Panels two to a row.
  const int cols = std::min<int>(2, static_cast<int>(ms.size())), rows = (static_cast<int>(ms.size()) + 1) / 2;
  const int panel_h = top + cell_h * static_cast<int>(P) + 16;
  const int W = 20 + cols * (panel_w + gap), H = rows * panel_h + 54;
  double fmax = 0.0;
  for (const ForgettingMatrix& m : ms)
    for (size_t p = 0; p < P; ++p)
      for (size_t j = 0; j < p; ++j)
        if (std::isfinite(m.forgetting(p, j))) fmax = std::max(fmax, std::abs(m.forgetting(p, j)));
  if (fmax <= 0) fmax = 1;
  std::string o;
  char b[512];
  std::snprintf(b, sizeof b,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
                "font-size=\"11\">\n<title>Forgetting matrices</title>\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                W, H, W, H);
  o += b;
  auto color = [&](double f) {  // white at 0, red (#cc3311) at +fmax, green (#228833) at −fmax
    const double t = std::clamp(f / fmax, -1.0, 1.0);
    const int r0 = t > 0 ? 0xcc : 0x22, g0 = t > 0 ? 0x33 : 0x88, b0 = t > 0 ? 0x11 : 0x33;
    const double u = std::abs(t);
    char c[16];
    std::snprintf(c, sizeof c, "#%02x%02x%02x", static_cast<int>(255 + (r0 - 255) * u), static_cast<int>(255 + (g0 - 255) * u),
                  static_cast<int>(255 + (b0 - 255) * u));
    return std::string(c);
  };
  for (size_t s = 0; s < ms.size(); ++s) {
    const int x0 = 20 + static_cast<int>(s % 2) * (panel_w + gap), y0 = static_cast<int>(s / 2) * panel_h;
    std::snprintf(b, sizeof b, "<text x=\"%d\" y=\"%d\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", x0, y0 + 20,
                  xml_escape(ms[s].strategy).c_str());
    o += b;
    for (size_t j = 0; j < P; ++j) {
      std::snprintf(b, sizeof b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", x0 + left + cell_w * static_cast<int>(j) + cell_w / 2,
                    y0 + top - 6, xml_escape(corpora[j]).c_str());
      o += b;
    }
    for (size_t p = 0; p < P; ++p) {
      const int y = y0 + top + cell_h * static_cast<int>(p);
      std::snprintf(b, sizeof b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">after %s</text>\n", x0 + left - 6, y + cell_h / 2 + 4,
                    xml_escape(corpora[p]).c_str());
      o += b;
      for (size_t j = 0; j < P; ++j) {
        const int x = x0 + left + cell_w * static_cast<int>(j);
        const double l = ms[s].at(p, j);
        const bool seen = j <= p && std::isfinite(l);
        const std::string fill = !seen ? "#eeeeee" : j == p ? "#ffffff" : color(ms[s].forgetting(p, j));
        std::snprintf(b, sizeof b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"#999\"/>\n", x, y, cell_w,
                      cell_h, fill.c_str());
        o += b;
        if (!seen) continue;
        std::snprintf(b, sizeof b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-weight=\"%s\">%s</text>\n", x + cell_w / 2, y + 16,
                      j == p ? "bold" : "normal", fmt(l).c_str());
        o += b;
        if (j < p) {
          std::snprintf(b, sizeof b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#333\">%s</text>\n", x + cell_w / 2, y + 32,
                        fmt(ms[s].forgetting(p, j), "%+.3f").c_str());
          o += b;
        }
      }
    }
  }
  std::snprintf(b, sizeof b,
                "<text x=\"20\" y=\"%d\">Validation loss on each corpus (columns) after each phase (rows); bold: the corpus just "
                "trained on.</text>\n<text x=\"20\" y=\"%d\">Below it, the forgetting: loss(after p) − loss(after its own phase); "
                "red: forgot (up to %+.3f), green: improved.</text>\n</svg>\n",
                H - 40, H - 22, fmax);
  o += b;
  return o;
}

}  // namespace

std::string write_forgetting(const std::string& out_dir, const std::vector<std::string>& corpora,
                             const std::vector<ForgettingMatrix>& ms, const json& settings) {
  const size_t P = corpora.size();
  json out = settings;
  out["phases"] = corpora;
  out["strategies"] = json::object();
  std::string md = "| strategy | mean loss, all corpora | mean forgetting, earlier corpora | mean loss on each new corpus after its phase |\n|---|---|---|---|\n";
  for (const ForgettingMatrix& m : ms) {
    const std::string& s = m.strategy;
    json loss = json::array(), forget = json::array();
    double final_mean = 0, forget_mean = 0, learn_mean = 0;
    for (size_t p = 0; p < P; ++p) {
      json lr = json::array(), fr = json::array();
      for (size_t j = 0; j < P; ++j) {
        lr.push_back(j <= p ? json(m.at(p, j)) : json());
        fr.push_back(j <= p ? json(m.forgetting(p, j)) : json());
      }
      loss.push_back(lr);
      forget.push_back(fr);
      learn_mean += m.at(p, p) / static_cast<double>(P);
    }
    for (size_t j = 0; j < P; ++j) final_mean += m.at(P - 1, j) / static_cast<double>(P);
    for (size_t j = 0; j + 1 < P; ++j) forget_mean += m.forgetting(P - 1, j) / static_cast<double>(P - 1);
    out["strategies"][s] = {{"loss", loss}, {"forgetting", forget}, {"final_mean_loss", final_mean},
                            {"final_mean_forgetting", forget_mean}, {"mean_loss_on_new_corpus", learn_mean}};
    md += "| " + s + " | " + fmt(final_mean) + " | " + fmt(forget_mean, "%+.3f") + " | " + fmt(learn_mean) + " |\n";
  }
  md += "\nValidation loss after each phase (rows) on each corpus (columns), forgetting in brackets:\n";
  for (const ForgettingMatrix& m : ms) {
    md += "\n**" + m.strategy + "**\n\n| after \\ on |";
    for (const std::string& c : corpora) md += " " + c + " |";
    md += "\n|---|";
    for (size_t j = 0; j < P; ++j) md += "---|";
    md += "\n";
    for (size_t p = 0; p < P; ++p) {
      md += "| " + corpora[p] + " |";
      for (size_t j = 0; j < P; ++j) {
        std::string cell;
        if (j == p) cell = "**" + fmt(m.at(p, j)) + "**";
        if (j < p) cell = fmt(m.at(p, j)) + " (" + fmt(m.forgetting(p, j), "%+.3f") + ")";
        md.append(" ").append(cell).append(" |");
      }
      md += "\n";
    }
  }
  write_file_atomic(out_dir + "/forgetting.json", out.dump(2) + "\n");
  write_file_atomic(out_dir + "/forgetting.md", md);
  write_file_atomic(out_dir + "/forgetting.svg", matrices_svg(ms, corpora));
  // Lines: after each phase, the mean forgetting on the earlier corpora (solid) and the loss on the
  // corpus just trained on (dashed), per strategy.
  LineChart lc;
  lc.title = "Forgetting (solid) and loss on the new corpus (dashed) after each phase";
  lc.xlabel = "phase";
  lc.ylabel = "validation loss / forgetting";
  for (size_t si = 0; si < ms.size(); ++si) {
    ChartSeries f{ms[si].strategy + ": mean forgetting", {}, {}}, l{ms[si].strategy + ": loss on new corpus", {}, {}};
    f.color = l.color = static_cast<int>(si);
    l.dashed = true;
    for (size_t p = 0; p < P; ++p) {
      double fm = 0;
      for (size_t j = 0; j < p; ++j) fm += ms[si].forgetting(p, j) / static_cast<double>(p);
      if (p > 0) f.x.push_back(static_cast<double>(p)), f.y.push_back(fm);
      l.x.push_back(static_cast<double>(p));
      l.y.push_back(ms[si].at(p, p));
    }
    lc.series.push_back(f);
    lc.series.push_back(l);
  }
  write_file_atomic(out_dir + "/forgetting-lines.svg", line_chart_svg(lc));
  return md;
}

}  // namespace moe
