// forgetting.h — the results of `moe lifelong` (docs/MECHANISMS.md §6): per strategy, the validation
// loss on each corpus after each phase, the forgetting loss_j(after p) − loss_j(after j), and their
// summary, as JSON, markdown and SVG.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe {

struct ForgettingMatrix {
  std::string strategy;
  std::vector<std::vector<double>> loss;  // [phase p][corpus j], the corpora seen by phase p (NaN after)
  double at(size_t p, size_t j) const { return loss[p][j]; }
  double forgetting(size_t p, size_t j) const { return loss[p][j] - loss[j][j]; }
};

// Writes OUT/forgetting.json (`settings` plus the phases and, per strategy, the loss and forgetting
// matrices, the final mean loss over all corpora, the final mean forgetting over the earlier corpora,
// and the mean loss on each corpus right after its phase), forgetting.md (the same as tables),
// forgetting.svg (one matrix per strategy, cells coloured by forgetting) and forgetting-lines.svg
// (after each phase: mean forgetting and the loss on the new corpus, per strategy). Returns the
// markdown.
std::string write_forgetting(const std::string& out_dir, const std::vector<std::string>& corpora,
                             const std::vector<ForgettingMatrix>& ms, const nlohmann::json& settings);

}  // namespace moe
