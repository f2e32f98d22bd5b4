// dispatch.h — the dispatch plan: which (token, choice) pairs each expert processes, in which row of
// an expert-contiguous buffer, and which pairs capacity drops (docs/MECHANISMS.md §4).
//
// Built once per step by a counting sort over expert ids and reused by the backward pass. It is a
// separate step so that an expert-parallel all-to-all can sit between gather and experts: the plan
// says exactly which rows go to which expert.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/config.h"
#include "moe/router.h"

namespace moe {

struct DispatchPlan {
  int T = 0, k = 0, E = 0;
  int64_t capacity = -1;              // slots per expert; -1: dropless
  std::vector<int32_t> routed;        // (E) pairs the router assigned to each expert (before capacity)
  std::vector<int32_t> counts;        // (E) pairs each expert keeps
  std::vector<int64_t> offsets;       // (E+1) first row of each expert in the buffer
  std::vector<int32_t> pair_row;      // (T·k) buffer row of pair (t, i), -1 if dropped
  std::vector<int32_t> row_token;     // (rows) token of each buffer row
  std::vector<int32_t> row_pair;      // (rows) pair index t·k+i of each buffer row
  int64_t dropped = 0;                // pairs dropped by capacity

  int64_t rows() const { return offsets.empty() ? 0 : offsets.back(); }
  // Dropped pairs over routed pairs (empty slots are neither).
  float dropped_fraction() const {
    const int64_t routed_pairs = rows() + dropped;
    return routed_pairs ? static_cast<float>(static_cast<double>(dropped) / static_cast<double>(routed_pairs)) : 0.f;
  }
};

// C = ceil(cf·T·k/E), or -1 when cf <= 0 (dropless).
int64_t expert_capacity(float capacity_factor, int T, int k, int E);

// Counting sort of the pairs of r by expert (empty slots, expert -1, are skipped). With a capacity, `position` keeps each expert's first C
// pairs in token order (pair t·k+i before t·k+i+1), `probs` its C pairs with the largest gates (ties:
// token order). Within an expert, rows follow token order.
DispatchPlan make_dispatch_plan(const Routing& r, int E, float capacity_factor, DropPolicy policy);

// buf[row] = x[row_token[row]] for every row: (rows, d) from (T, d); the bf16 form rounds as it copies.
void dispatch_gather(const DispatchPlan& p, const float* x, int d, float* buf);
void dispatch_gather(const DispatchPlan& p, const float* x, int d, uint16_t* buf);

}  // namespace moe
