// evaluate.h — measurements of a model on held-out text: the validation loss, and the metrics of its
// sparse FFNs (router load and balance, PEER's expert usage) over the validation windows.
#pragma once
#include <vector>

#include "data/shard.h"
#include "model/transformer.h"

namespace moe {

// Mean cross-entropy over the first `windows` windows of L tokens of the shard, in batches of up to
// `batch` windows (eval mode).
double evaluate(TransformerLM& model, const TokenShard& shard, int L, int windows, int batch);

// The metrics of every block whose FFN has them (MoE routing, PEER usage), accumulated over the first
// `windows` windows of the shard. The model runs with targets in eval mode, or with train_routing in
// training mode (noise, sampling, balanced assignment, BatchNorm's batch statistics; no gradient).
// Returns the mean cross-entropy; `stats` gets one accumulator per such block.
double sparse_report(TransformerLM& model, const TokenShard& shard, int L, int windows, int batch, bool train_routing,
                     std::vector<LayerStats>& stats);

}  // namespace moe
