// peer_stats.h — the expert usage of a PEER layer over one or many forwards (He 2024, Table 2), its
// FfnStats: the gate accumulated per expert over every retrieval. usage: the share of the N experts
// retrieved at least once; unevenness: log N + Σ z_i log z_i with z the normalised accumulated gates
// (the KL divergence of z from uniform; 0 when every expert gets the same total, log N when one gets
// everything).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/ffn.h"

namespace moe {

class PeerLayer;

class PeerStats : public FfnStats {
 public:
  explicit PeerStats(const PeerLayer& layer) : layer_(&layer) {}
  void add() override;
  const char* group() const override { return "peer"; }
  nlohmann::json to_json() const override;  // usage, unevenness, experts, pairs
  // to_json, query_bn, the cumulative share curve and the share of the 0.1/1/10% most used experts.
  nlohmann::json report() const override;
  std::string summary() const override;   // "usage 5.6% unevenness 2.35"
  std::string describe() const override;

  double usage() const;
  double unevenness() const;
  // The share of the total gate held by the r most used experts, at `points` ranks spaced evenly in
  // log r from 1 to N: [[r, share], ...] (a Lorenz curve of expert use).
  nlohmann::json cumulative_share(int points) const;
  double top_share(double fraction) const;  // the share of the total gate held by the most used fraction of N

  std::vector<double> score;  // (N)
  int64_t pairs = 0;

 private:
  const PeerLayer* layer_;
};

}  // namespace moe
