// run_folder.h — what the lab reads back from a run folder (train/checkpoint.h): its metrics.jsonl, the
// per-layer metrics of its sparse FFNs (of any kind), and the comparison row of `moe compare` (the
// validation loss and the balance in training and on held-out text).
#pragma once
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe {

// Is `dir` a run folder (config.json and metrics.jsonl)?
bool is_run_folder(const std::string& dir);
// Every JSON object line of a file, damaged lines skipped (none when the file cannot be read).
template <class Json = nlohmann::json>
std::vector<Json> read_json_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<Json> out;
  std::string line;
  while (std::getline(in, line)) {
    auto j = Json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object()) out.push_back(std::move(j));
  }
  return out;
}
// Every JSON line of RUN/metrics.jsonl, damaged lines skipped; throws moe::Error naming the folder when
// it has none.
std::vector<nlohmann::json> read_metrics(const std::string& run);
// The per-layer metric objects of one metrics line or report: every object with a "layer" in its lists.
std::vector<nlohmann::json> layer_objects(const nlohmann::json& line);
// The mean of `key` over the layer objects that have it; NaN when none has it or one holds no number.
double layer_mean(const std::vector<nlohmann::json>& layers, const std::string& key);
// For each key, the mean over the last `last` lines that logged layers of its mean over the layers.
nlohmann::json training_means(const std::vector<nlohmann::json>& lines, int last, const std::vector<std::string>& keys);

// `moe compare`'s row for one run: {"run", "ffn", "val_loss", "train": {max_mean, cv, cv_importance},
// "eval": {max_mean, cv, entropy, consecutive_same, random_same}} (train/eval absent for a dense model);
// the validation loss over `windows` windows of `corpus` ("" : the run's own).
nlohmann::json compare_run(const std::string& run, const std::string& corpus, int windows, int last);
// The rows as table cells, the column names first (a dense model's balance cells are empty).
std::vector<std::vector<std::string>> compare_cells(const std::vector<nlohmann::json>& rows);
// The rows as a markdown table (header: with its two header lines).
std::string compare_markdown(const std::vector<nlohmann::json>& rows, bool header = true);

}  // namespace moe
