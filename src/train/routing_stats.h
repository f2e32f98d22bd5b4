// routing_stats.h — the router metrics of docs/MECHANISMS.md §8 for one MoE layer, accumulated over one or many
// forwards: per-expert load, its CV and max/mean, the CV of importance (Σ gates, Shazeer), dropped
// pairs, tokens that reach no expert, experts used, router entropy and the rate at which consecutive
// tokens share their first expert (Mixtral; random baseline 1/E).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/moe_layer.h"
#include "moe/peer.h"

namespace moe {

struct RoutingStats {
  int E = 0;
  int64_t tokens = 0, dropped = 0, unrouted = 0, same = 0, pairs = 0;
  std::vector<double> routed;      // (E) pairs routed to each expert, before capacity
  std::vector<double> importance;  // (E) Σ over tokens of the expert's gate
  double entropy = 0.0;            // Σ over tokens of H(softmax(s_t))
  double aux = 0.0, z = 0.0, loss_terms = 0.0;
  int forwards = 0;

  // Adds the last forward of m; seq_len separates sequences for the consecutive-token rate.
  void add(const MoeLayer& m, int seq_len);
  // load, cv, max_mean, cv_importance, dropped, unrouted, experts_used, entropy, consecutive_same,
  // random_same (1/E), and the loss terms averaged over the forwards.
  nlohmann::json to_json() const;
};

// Expert usage of a PEER layer over one or many forwards (He 2024, Table 2): the gate accumulated
// per expert over every retrieval. usage: the share of the N experts retrieved at least once;
// unevenness: log N + Σ z_i log z_i with z the normalised accumulated gates (the KL divergence of
// z from uniform; 0 when every expert gets the same total, log N when one gets everything).
struct PeerStats {
  std::vector<double> score;  // (N)
  int64_t pairs = 0;
  void add(const PeerLayer& layer);
  double usage() const;
  double unevenness() const;
  // The share of the total gate held by the r most used experts, at `points` ranks spaced evenly in
  // log r from 1 to N: [[r, share], ...] (a Lorenz curve of expert use).
  nlohmann::json cumulative_share(int points) const;
  double top_share(double fraction) const;  // the share of the total gate held by the most used fraction of N
  nlohmann::json to_json() const;  // usage, unevenness, experts, pairs
};

// One SVG figure: a bar chart of the expert load per layer (uniform load marked), with the layer's
// CV and max/mean. layers: the to_json() objects with a "layer" field.
std::string routing_svg(const nlohmann::json& layers, const std::string& title);

}  // namespace moe
