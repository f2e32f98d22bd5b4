// scoring.h — token ids in, scores and logits out: what `moe eval --ids` and `moe logits` do, so a
// model here can be compared number for number with another implementation (docs/INTEROP.md).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/transformer.h"

namespace moe {

// Sequences of token ids, one per non-empty line of whitespace-separated integers. Throws moe::Error
// naming the file, line and token for anything else, or an id outside [0, vocab_size).
std::vector<std::vector<int32_t>> read_token_ids(const std::string& path, int vocab_size);

struct IdsScore {
  double mean_ce = 0.0;     // mean next-token cross-entropy over every prediction
  int64_t predictions = 0;  // Σ (length − 1)
  int sequences = 0;
};
// Each sequence scored on its own (eval mode): the loss of predicting token t+1 from tokens ≤ t.
IdsScore score_ids(TransformerLM& model, const std::vector<std::vector<int32_t>>& seqs);

// The logits of every position of every sequence (eval mode), written to `path`: .npy (float32, shape
// (L, V) for one sequence, (B, L, V) for B of one length) or .safetensors (tensor "logits" likewise).
// Returns the shape written.
std::vector<int64_t> write_logits(TransformerLM& model, const std::vector<std::vector<int32_t>>& seqs,
                                  const std::string& path);

}  // namespace moe
