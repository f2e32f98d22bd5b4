// routing_stats.h — the router metrics of docs/MECHANISMS.md §8 for one MoE layer, accumulated over one or many
// forwards: per-expert load, its CV and max/mean, the CV of importance (Σ gates, Shazeer), dropped
// pairs, tokens that reach no expert, experts used, router entropy and the rate at which consecutive
// tokens share their first expert (Mixtral; random baseline 1/E).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/ffn.h"

namespace moe {

class MoeLayer;

// The MoE layer's FfnStats: each add() takes in the layer's last forward.
class RoutingStats : public FfnStats {
 public:
  explicit RoutingStats(const MoeLayer& layer) : layer_(&layer) {}
  void add() override;
  const char* group() const override { return "moe"; }
  // load, cv, max_mean, cv_importance, dropped, unrouted, experts_used, entropy, consecutive_same,
  // random_same (1/E), and the loss terms averaged over the forwards (aux, z, loss_terms; rl for a
  // router trained by reward).
  nlohmann::json to_json() const override;
  std::string summary() const override;   // "max/mean 1.31 cv 0.12"
  std::string describe() const override;  // the numbers of to_json, and a bar per expert (up to 64)
  // The counts and sums of every rank (the loss terms are the whole batch's on every rank already).
  void reduce(Comm& comm) override;

  int E = 0;
  int64_t tokens = 0, dropped = 0, unrouted = 0, same = 0, pairs = 0;
  std::vector<double> routed;      // (E) pairs routed to each expert, before capacity
  std::vector<double> importance;  // (E) Σ over tokens of the expert's gate
  double entropy = 0.0;            // Σ over tokens of H(softmax(s_t))
  double aux = 0.0, z = 0.0, rl = 0.0, loss_terms = 0.0;
  int forwards = 0;
  // Expert parallelism: rows this rank's experts computed (received from every rank); after reduce(),
  // those of every rank in rank order (the load per rank after routing).
  int64_t rows_here = 0;
  std::vector<double> rank_rows;

 private:
  const MoeLayer* layer_;
};

}  // namespace moe
