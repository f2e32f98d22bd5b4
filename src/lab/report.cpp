#include "lab/report.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "eval/charts.h"
#include "lab/laws.h"
#include "lab/run_folder.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace moe {
namespace {

std::string esc(const std::string& s) { return xml_escape(s); }

std::string fmt(const json& v) {
  if (v.is_null()) return "–";
  if (v.is_number_integer()) {
    const double d = v.get<double>();
    char b[32];
    if (std::fabs(d) >= 1e6) std::snprintf(b, sizeof b, "%.3gM", d / 1e6);
    else std::snprintf(b, sizeof b, "%lld", v.get<long long>());
    return b;
  }
  if (v.is_number()) {
    const double d = v.get<double>();
    char b[32];
    if (!std::isfinite(d)) return "–";
    if (std::fabs(d) >= 1e9) std::snprintf(b, sizeof b, "%.3g", d);
    else if (std::fabs(d) >= 100) std::snprintf(b, sizeof b, "%.0f", d);
    else std::snprintf(b, sizeof b, "%.4g", d);
    return b;
  }
  return v.is_string() ? v.get<std::string>() : v.dump();
}

const char* kStyle = R"(<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1em;margin:1em 0 .3em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:14px}
figure{margin:0}svg{width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:12px;margin:.5em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9em}
@media print{body{max-width:none;margin:0}.grid{display:block}figure{break-inside:avoid;margin-bottom:8px}
h2{break-after:avoid}table{display:table;font-size:9px}}
</style>)";

std::string page(const std::string& title, const std::string& body) {
  return "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
         "content=\"width=device-width, initial-scale=1\"><title>" +
         esc(title) + "</title>" + kStyle + "</head><body>\n<h1>" + esc(title) + "</h1>\n" + body + "</body></html>\n";
}

// The charts of the page being made, kept for ReportOptions::figures_dir (report_html sets it).
std::vector<std::string>* g_figures = nullptr;

std::string figure(const std::string& svg) {
  if (g_figures) g_figures->push_back(svg);
  return "<figure>" + svg + "</figure>\n";
}

// "Validation loss against experts E" → "validation-loss-against-experts-e".
std::string slug(const std::string& svg) {
  const size_t a = svg.find("aria-label=\""), b = a == std::string::npos ? a : svg.find('"', a + 12);
  std::string out;
  for (size_t i = a == std::string::npos ? 0 : a + 12; i < b && i < svg.size(); ++i) {
    const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(svg[i])));
    if (std::isalnum(static_cast<unsigned char>(c))) out += c;
    else if (!out.empty() && out.back() != '-') out += '-';
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.substr(0, 60);
}

// Table cells as HTML, the first row as the header.
std::string html_table(const std::vector<std::vector<std::string>>& cells) {
  std::string out = "<table>\n";
  for (size_t r = 0; r < cells.size(); ++r) {
    out += "<tr>";
    for (const std::string& c : cells[r]) out += (r == 0 ? "<th>" : "<td>") + esc(c) + (r == 0 ? "</th>" : "</td>");
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

// Per sparse layer, the heatmap of each expert's share of the load over the steps (at most 80 columns,
// each the mean of its steps).
std::vector<std::string> load_heatmaps(const std::vector<json>& lines, const std::string& name, bool last_layer_only) {
  std::map<int, std::vector<std::pair<double, std::vector<double>>>> per_layer;  // layer -> (step, load)
  for (const json& l : lines)
    for (const json& L : layer_objects(l))
      if (L.contains("load") && L["load"].is_array() && !L["load"].empty())
        per_layer[L.value("layer", 0)].emplace_back(l.value("step", 0.0) + 1, L["load"].get<std::vector<double>>());
  std::vector<std::string> out;
  for (auto it = per_layer.begin(); it != per_layer.end(); ++it) {
    if (last_layer_only && std::next(it) != per_layer.end()) continue;
    const auto& steps = it->second;
    const size_t E = steps[0].second.size(), cols = std::min<size_t>(80, steps.size()), per = (steps.size() + cols - 1) / cols;
    Heatmap h;
    h.title = name + ": expert load, layer " + std::to_string(it->first);
    h.xlabel = "training step";
    h.ylabel = "expert";
    h.reference = 1.0 / static_cast<double>(E);
    h.cells.assign(E, {});
    for (size_t c0 = 0; c0 < steps.size(); c0 += per) {
      const size_t c1 = std::min(steps.size(), c0 + per);
      h.x.push_back(steps[c1 - 1].first);
      for (size_t e = 0; e < E; ++e) {
        double s = 0.0;
        for (size_t i = c0; i < c1; ++i) s += e < steps[i].second.size() ? steps[i].second[e] : 0.0;
        h.cells[e].push_back(s / static_cast<double>(c1 - c0));
      }
    }
    h.height = static_cast<int>(std::clamp<size_t>(80 + 6 * E, 200, 520));
    out.push_back(heatmap_svg(h));
  }
  return out;
}

std::string routing_rows(const std::vector<std::string>& runs, const ReportOptions& o) {
  std::vector<json> rows;
  std::string skipped;
  for (const std::string& r : runs) {
    try {
      rows.push_back(compare_run(r, "", o.windows, 50));
    } catch (const Error& e) {
      skipped += "<p class=\"note\">" + esc(r) + ": no routing row (" + esc(e.what()) + ")</p>\n";
    }
  }
  return (rows.empty() ? std::string() : html_table(compare_cells(rows))) + skipped;
}

std::string run_report(const std::string& dir, const ReportOptions& o) {
  const std::vector<json> lines = read_metrics(dir);
  const RunConfig c = read_checkpoint_config(dir);
  std::string body = "<p>" + esc(c.model.ffn_label()) + "; d = " + std::to_string(c.model.hidden_size) + ", " +
                     std::to_string(c.model.num_hidden_layers) + " blocks, corpus " + esc(c.train.corpus) + ", " +
                     std::to_string(lines.size()) + " steps logged.</p>\n";
  ChartSeries train{"training cross-entropy", {}, {}, true, false}, val{"validation loss", {}, {}, true, true};
  ChartSeries rate{"tokens/s", {}, {}, true, false};
  for (const json& l : lines) {
    const double step = l.value("step", 0.0) + 1;
    if (l.contains("ce")) train.x.push_back(step), train.y.push_back(l["ce"].get<double>());
    if (l.contains("val_loss")) val.x.push_back(step), val.y.push_back(l["val_loss"].get<double>());
    if (l.contains("tokens_per_s")) rate.x.push_back(step), rate.y.push_back(l["tokens_per_s"].get<double>());
  }
  if (!val.y.empty()) body += "<p>Final validation loss <b>" + fmt(val.y.back()) + "</b>.</p>\n";
  body += "<h2>Loss</h2>\n<div class=\"grid\">\n";
  body += figure(line_chart_svg({"Training and validation loss", "step", "loss (nats)", false, false, {train, val}}));
  body += figure(line_chart_svg({"Throughput", "step", "tokens/s", false, false, {rate}}));
  body += "</div>\n";
  const std::vector<std::string> maps = load_heatmaps(lines, fs::path(dir).filename().string(), false);
  if (!maps.empty()) {
    body += "<h2>Expert load over training</h2>\n<p class=\"note\">Each expert's share of the routed tokens per step "
            "(averaged over neighbouring steps); the mark on the color bar is the uniform share 1/E.</p>\n<div class=\"grid\">\n";
    for (const std::string& m : maps) body += figure(m);
    body += "</div>\n";
  }
  body += "<h2>Routing</h2>\n" + routing_rows({dir}, o);
  return page("moe.cpp run " + dir, body);
}

double num_of(const ordered_json& r, const char* key) {
  return r.contains(key) && r[key].is_number() ? r[key].get<double>() : std::nan("");
}

// Rows grouped by their swept values other than those whose name contains `axis` ("experts",
// "granularity"): one series per group.
std::map<std::string, std::vector<const ordered_json*>> group_rows(const std::vector<ordered_json>& rows,
                                                                   const std::vector<std::string>& swept, const std::string& axis) {
  // A column names the groups only when it splits them further (a key derived from another adds nothing).
  std::vector<std::string> keys(rows.size());
  size_t groups = 1;
  for (const std::string& c : swept) {
    if (c.find(axis) != std::string::npos) continue;
    std::vector<std::string> next = keys;
    for (size_t i = 0; i < rows.size(); ++i)
      if (rows[i].contains(c))
        next[i] += (next[i].empty() ? "" : ", ") + c.substr(c.rfind('.') + 1) + " = " + fmt(json::parse(rows[i][c].dump()));
    const size_t n = std::set<std::string>(next.begin(), next.end()).size();
    if (n > groups) {
      keys = std::move(next);
      groups = n;
    }
  }
  std::map<std::string, std::vector<const ordered_json*>> g;
  for (size_t i = 0; i < rows.size(); ++i) g[keys[i].empty() ? "all points" : keys[i]].push_back(&rows[i]);
  return g;
}

ChartSeries series_of(const std::string& name, const std::vector<const ordered_json*>& rows, const char* x, const char* y,
                      int color) {
  std::vector<std::pair<double, double>> p;
  for (const ordered_json* r : rows) p.emplace_back(num_of(*r, x), num_of(*r, y));
  std::sort(p.begin(), p.end());
  ChartSeries s;
  s.name = name;
  s.color = color;
  for (auto [a, b] : p) s.x.push_back(a), s.y.push_back(b);
  return s;
}

std::string fit_table(const LawFit& f) {
  const auto& names = law_coefficients(f.law);
  const auto pub = published_fits(f.law);
  std::string t = "<table><tr><th>coefficient</th><th>fit</th><th>90% interval</th>";
  for (const auto& [who, c] : pub) t += "<th>" + esc(who) + "</th>";
  t += "</tr>\n";
  for (size_t k = 0; k < names.size(); ++k) {
    t += "<tr><td>" + names[k] + "</td><td>" + fmt(f.coef[k]) + "</td><td>[" + fmt(f.interval[k].first) + ", " +
         fmt(f.interval[k].second) + "]</td>";
    for (const auto& [who, c] : pub) t += "<td>" + fmt(c[k]) + "</td>";
    t += "</tr>\n";
  }
  return t + "</table>\n<p class=\"note\">" + std::to_string(f.points) + " points, RMSE " + fmt(f.rmse) +
         " nats, Huber δ = 0.1 on log-loss residuals, 90% intervals from " + std::to_string(f.bootstrap) +
         " bootstrap refits (`moe fit`).</p>\n";
}

// Loss against `axis` per group with the law's curves; empty when the column does not vary.
std::string law_section(const std::vector<ordered_json>& rows, const std::vector<std::string>& swept, const std::string& path,
                        Law law, const char* axis, const std::string& label) {
  std::set<double> values;
  for (const auto& r : rows) values.insert(num_of(r, axis));
  if (values.size() < 2) return "";
  const auto groups = group_rows(rows, swept, axis);
  LineChart c{"Validation loss against " + label, label, "validation loss (nats)", true, false, {}};
  int color = 0;
  std::string note;
  std::optional<LawFit> fit;
  try {
    fit = fit_law(law, read_law_points(path, law), 100);
  } catch (const Error& e) {
    note = "<p class=\"note\">No " + std::string(name_of(law)) + " fit: " + esc(e.what()) + ".</p>\n";
  }
  for (const auto& [name, g] : groups) {
    c.series.push_back(series_of(name, g, axis, "val_loss", color));
    if (fit) {
      double n = 0, d = 0;
      for (const ordered_json* r : g) {
        n += num_of(*r, law == Law::clark ? "active_params" : "non_embedding_params") / static_cast<double>(g.size());
        d += num_of(*r, "tokens") / static_cast<double>(g.size());
      }
      ChartSeries s{name + " (fit)", {}, {}, true, false, true, color};
      const double lo = *values.begin(), hi = *values.rbegin();
      for (int i = 0; i <= 40; ++i) {
        const double x = lo * std::pow(hi / lo, i / 40.0);
        LawPoint p{n, law == Law::clark ? x : 1, law == Law::krajewski ? x : 1, d, 0};
        s.x.push_back(x);
        s.y.push_back(law_loss(law, fit->coef, p));
      }
      c.series.push_back(s);
    }
    ++color;
  }
  std::string out = "<div class=\"grid\">\n" + figure(line_chart_svg(c));
  if (fit)
    out += "<div><h3>" + std::string(law == Law::clark ? "Clark et al. 2022" : "Krajewski et al. 2024") + " fit (dashed)</h3>\n" +
           fit_table(*fit) + "</div>\n";
  return out + "</div>\n" + note;
}

std::string sweep_report(const std::string& dir, const ReportOptions& o) {
  const std::string path = dir + "/results.jsonl";
  const std::vector<ordered_json> rows = read_json_lines<ordered_json>(path);
  if (rows.empty()) fail(dir + " holds a sweep with no finished point yet (results.jsonl is empty); run `moe sweep` to the end first");
  std::vector<std::string> swept;  // the columns before "name"
  for (const auto& [k, v] : rows[0].items()) {
    if (k == "name") break;
    swept.push_back(k);
  }
  std::string body = "<p>" + std::to_string(rows.size()) + " finished points. Swept: ";
  for (size_t i = 0; i < swept.size(); ++i) body += (i ? ", " : "") + esc(swept[i]);
  body += ".</p>\n<h2>Results</h2>\n<table><tr>";
  std::vector<std::string> cols = {"name"};
  cols.insert(cols.end(), swept.begin(), swept.end());
  for (const char* c : {"params", "active_params", "flops_per_token", "tokens", "train_flops", "wall_clock_s", "tokens_per_s",
                        "val_loss", "max_mean", "cv", "dropped"})
    cols.push_back(c);
  for (const std::string& c : cols) body += "<th>" + esc(c.substr(c.rfind('.') + 1)) + "</th>";
  body += "</tr>\n";
  for (const auto& r : rows) {
    body += "<tr>";
    for (const std::string& c : cols) body += "<td>" + esc(r.contains(c) ? fmt(json::parse(r[c].dump())) : "–") + "</td>";
    body += "</tr>\n";
  }
  body += "</table>\n";
  const std::string by_e = law_section(rows, swept, path, Law::clark, "experts", "experts E");
  const std::string by_g = law_section(rows, swept, path, Law::krajewski, "granularity", "granularity G");
  if (!by_e.empty()) body += "<h2>Loss against the number of experts</h2>\n" + by_e;
  if (!by_g.empty()) body += "<h2>Loss against granularity</h2>\n" + by_g;
  // Cost: loss against FLOPs and time, and throughput, grouped as the main axis is.
  const char* axis = !by_g.empty() ? "granularity" : !by_e.empty() ? "experts" : "\x01";
  const auto groups = group_rows(rows, swept, axis);
  LineChart flops{"Validation loss against training FLOPs", "training FLOPs (routing included)", "validation loss (nats)", true, false, {}};
  LineChart wall{"Validation loss against wall-clock", "seconds of training", "validation loss (nats)", true, false, {}};
  LineChart rate{"Throughput", !by_g.empty() ? "granularity G" : !by_e.empty() ? "experts E" : "point", "tokens/s", true, false, {}};
  int color = 0;
  for (const auto& [name, g] : groups) {
    flops.series.push_back(series_of(name, g, "train_flops", "val_loss", color));
    wall.series.push_back(series_of(name, g, "wall_clock_s", "val_loss", color));
    flops.series.back().line = wall.series.back().line = false;  // scatter: the points need not be ordered by cost
    if (axis[0] != '\x01') rate.series.push_back(series_of(name, g, axis, "tokens_per_s", color));
    ++color;
  }
  if (axis[0] == '\x01') {
    ChartSeries s{"tokens/s", {}, {}, false, true};
    for (size_t i = 0; i < rows.size(); ++i) s.x.push_back(static_cast<double>(i + 1)), s.y.push_back(num_of(rows[i], "tokens_per_s"));
    rate.logx = false;
    rate.series.push_back(s);
  }
  body += "<h2>Cost</h2>\n<div class=\"grid\">\n";  // one statement per figure: figures_dir numbers them in order
  body += figure(line_chart_svg(flops));
  body += figure(line_chart_svg(wall));
  body += figure(line_chart_svg(rate));
  body += "</div>\n";
  // Each point's validation curve, and its expert load.
  LineChart curves{"Validation loss of every point", "step", "validation loss (nats)", false, false, {}};
  std::vector<std::string> runs, maps;
  for (const auto& r : rows) {
    const std::string run = dir + "/points/" + r["name"].get<std::string>();
    runs.push_back(run);
    std::vector<json> lines;
    try {
      lines = read_metrics(run);
    } catch (const Error&) {
      continue;
    }
    ChartSeries s{r["name"].get<std::string>(), {}, {}, true, false};
    for (const json& l : lines)
      if (l.contains("val_loss")) s.x.push_back(l.value("step", 0.0) + 1), s.y.push_back(l["val_loss"].get<double>());
    s.markers = s.x.size() <= 12;  // a few evaluations: show each
    curves.series.push_back(s);
    for (std::string& m : load_heatmaps(lines, r["name"].get<std::string>(), true)) maps.push_back(std::move(m));
  }
  body += "<h2>Training</h2>\n<div class=\"grid\">\n" + figure(line_chart_svg(curves)) + "</div>\n";
  if (!maps.empty()) {
    body += "<h2>Expert load over training</h2>\n<p class=\"note\">The last sparse layer of each point (`moe report " + esc(dir) +
            "/points/NAME` shows every layer); the mark on the color bar is the uniform share 1/E.</p>\n<div class=\"grid\">\n";
    for (const std::string& m : maps) body += figure(m);
    body += "</div>\n";
  }
  body += "<h2>Routing</h2>\n" + routing_rows(runs, o);
  return page("moe.cpp sweep " + dir, body);
}

}  // namespace

std::string report_html(const std::string& dir, const ReportOptions& o) {
  const bool sweep = fs::is_regular_file(fs::path(dir) / "results.jsonl");
  if (sweep || is_run_folder(dir)) {
    std::vector<std::string> figures;
    g_figures = &figures;
    std::string html;
    try {
      html = sweep ? sweep_report(dir, o) : run_report(dir, o);
    } catch (...) {
      g_figures = nullptr;
      throw;
    }
    g_figures = nullptr;
    if (!o.figures_dir.empty()) {
      fs::create_directories(o.figures_dir);
      for (size_t i = 0; i < figures.size(); ++i) {
        char name[96];
        std::snprintf(name, sizeof name, "%02zu-%s.svg", i, slug(figures[i]).c_str());
        write_file_atomic((fs::path(o.figures_dir) / name).string(), figures[i]);
      }
    }
    return html;
  }
  fail(dir + " holds no run (config.json and metrics.jsonl of `moe train`) and no sweep (results.jsonl of `moe sweep`); "
       "give a run's train.out or a sweep's --out");
}

}  // namespace moe
