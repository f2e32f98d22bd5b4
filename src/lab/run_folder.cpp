#include "lab/run_folder.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "eval/evaluate.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace moe {

bool is_run_folder(const std::string& dir) {
  return fs::is_regular_file(fs::path(dir) / "config.json") && fs::is_regular_file(fs::path(dir) / "metrics.jsonl");
}

std::vector<nlohmann::json> read_metrics(const std::string& run) {
  if (!fs::is_regular_file(run + "/metrics.jsonl")) fail("no metrics.jsonl in " + run + " (is it the out folder of `moe train`?)");
  return read_json_lines(run + "/metrics.jsonl");
}

std::vector<nlohmann::json> layer_objects(const nlohmann::json& line) {
  std::vector<nlohmann::json> out;
  for (const auto& [key, v] : line.items())
    if (v.is_array())
      for (const auto& l : v)
        if (l.is_object() && l.contains("layer")) out.push_back(l);
  return out;
}

double layer_mean(const std::vector<nlohmann::json>& layers, const std::string& key) {
  double s = 0.0;
  size_t n = 0;
  for (const auto& l : layers) {
    const auto it = l.find(key);
    if (it == l.end()) continue;
    s += it->is_number() ? it->get<double>() : std::nan("");
    ++n;
  }
  return n ? s / static_cast<double>(n) : std::nan("");
}

nlohmann::json training_means(const std::vector<nlohmann::json>& lines, int last, const std::vector<std::string>& keys) {
  std::vector<std::vector<nlohmann::json>> rows;
  for (const auto& j : lines) {
    std::vector<nlohmann::json> layers = layer_objects(j);
    if (!layers.empty()) rows.push_back(std::move(layers));
  }
  nlohmann::json out = nlohmann::json::object();
  const size_t from = rows.size() > static_cast<size_t>(last) ? rows.size() - static_cast<size_t>(last) : 0;
  for (const std::string& key : keys) {
    double s = 0.0;
    size_t n = 0;
    for (size_t i = from; i < rows.size(); ++i) {
      const double v = layer_mean(rows[i], key);
      if (std::isnan(v)) continue;
      s += v;
      ++n;
    }
    out[key] = n ? s / static_cast<double>(n) : std::nan("");
  }
  return out;
}

nlohmann::json compare_run(const std::string& run, const std::string& corpus, int windows, int last) {
  LoadedRun r = load_run(run);
  TokenShard val(checkpoint_val_shard(run, r.cfg, corpus.empty() ? r.cfg.train.corpus : corpus));
  std::vector<LayerStats> stats;
  const double loss = sparse_report(*r.model, val, r.cfg.model.max_position_embeddings, windows, r.cfg.train.batch_size,
                                    false, stats);
  nlohmann::json row = {{"run", run}, {"ffn", r.cfg.model.ffn_label()}, {"val_loss", loss}};
  if (stats.empty()) return row;  // a dense model: no balance to show
  std::vector<nlohmann::json> eval;
  for (const LayerStats& s : stats) eval.push_back(s.stats->to_json());
  row["train"] = training_means(read_metrics(run), last, {"max_mean", "cv", "cv_importance"});
  nlohmann::json e = nlohmann::json::object();
  for (const char* key : {"max_mean", "cv", "entropy", "consecutive_same", "random_same"}) e[key] = layer_mean(eval, key);
  row["eval"] = e;
  return row;
}

namespace {

std::string cell(const nlohmann::json& row, const char* part, const char* key, int digits) {  // "–": not logged
  if (!row.contains(part) || !row[part].contains(key) || !row[part][key].is_number()) return "–";
  const double v = row[part][key].get<double>();
  if (!std::isfinite(v)) return "–";
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

}  // namespace

std::vector<std::vector<std::string>> compare_cells(const std::vector<nlohmann::json>& rows) {
  std::vector<std::vector<std::string>> out = {{"run", "ffn", "val loss", "train max/mean", "train CV",
                                                "train CV(importance)", "eval max/mean", "eval CV", "eval entropy",
                                                "consecutive same (random)"}};
  for (const auto& r : rows) {
    char loss[32];
    std::snprintf(loss, sizeof loss, "%.4f", r["val_loss"].get<double>());
    std::vector<std::string> row = {r["run"].get<std::string>(), r["ffn"].get<std::string>(), loss};
    if (r.contains("eval"))
      row.insert(row.end(), {cell(r, "train", "max_mean", 2), cell(r, "train", "cv", 3), cell(r, "train", "cv_importance", 3),
                             cell(r, "eval", "max_mean", 2), cell(r, "eval", "cv", 3), cell(r, "eval", "entropy", 3),
                             cell(r, "eval", "consecutive_same", 3) + " (" + cell(r, "eval", "random_same", 3) + ")"});
    row.resize(out[0].size());  // a dense model: no balance to show
    out.push_back(std::move(row));
  }
  return out;
}

std::string compare_markdown(const std::vector<nlohmann::json>& rows, bool header) {
  const std::vector<std::vector<std::string>> cells = compare_cells(rows);
  auto line = [](const std::vector<std::string>& r) {
    std::string l = "|";
    for (const std::string& c : r) l += c.empty() ? " |" : " " + c + " |";
    return l + "\n";
  };
  std::string out;
  if (header) {
    out = line(cells[0]) + "|";
    for (size_t i = 0; i < cells[0].size(); ++i) out += "---|";
    out += "\n";
  }
  for (size_t i = 1; i < cells.size(); ++i) out += line(cells[i]);
  return out;
}

}  // namespace moe
