// dispatch.h — the way from tokens to experts and back (docs/MECHANISMS.md §4):
//
//   plan      which (token, choice) pairs each expert processes, in which row of an expert-contiguous
//             buffer, and which pairs capacity drops: a counting sort over expert ids, built once per
//             step and reused by the backward pass
//   gather    tokens → rows (forward: x; backward: dy)
//   combine   rows → tokens, weighted by the gates (forward: y_t = Σ_i g_{t,i}·Y[row(t,i)])
//   scatter   rows → tokens, summed (backward: dx_t = Σ_i dX[row(t,i)])
//
// Each is its own step so that an expert-parallel all-to-all can sit between gather and experts and
// between experts and combine: the plan says exactly which rows go to which expert.
#pragma once
#include <cstdint>
#include <vector>

#include "core/bf16.h"
#include "moe/config.h"
#include "moe/routing.h"

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

// Counting sort of the pairs of r by expert (empty slots, expert -1, are skipped). With a capacity, `position` keeps each expert's first C
// pairs in token order (pair t·k+i before t·k+i+1), `probs` its C pairs with the largest gates (ties:
// token order). Within an expert, rows follow token order.
DispatchPlan make_dispatch_plan(const Routing& r, int E, float capacity_factor, DropPolicy policy);
// The two halves of that: which pairs survive a capacity of C slots per expert (C < 0: all), and the
// plan of the pairs `keep` marks. Expert parallelism decides `keep` over the whole batch of every
// rank (capacity is per expert, and an expert takes tokens from all ranks) and plans its own share.
std::vector<uint8_t> capacity_keep(const Routing& r, int E, int64_t capacity, DropPolicy policy);
DispatchPlan make_dispatch_plan(const Routing& r, int E, int64_t capacity, const std::vector<uint8_t>& keep);

// buf[row] = x[row_token[row]] for every row: (rows, d) from (T, d); the bf16 form rounds as it copies.
void dispatch_gather(const DispatchPlan& p, const float* x, int d, float* buf);
void dispatch_gather(const DispatchPlan& p, const float* x, int d, bf16_t* buf);

// y (T, d): y_t = a_t·base_t + Σ_i g_{t,i}·Y[pair_row(t,i)] over the kept pairs of r, Y (rows, d) in
// fp32 or bf16. base null: y_t starts at 0; base_scale null: a_t = 1 (base: the shared experts'
// output, base_scale: their Qwen2-MoE gate). One token per task, no atomics.
void dispatch_combine(const DispatchPlan& p, const Routing& r, const float* Y, int d, float* y,
                      const float* base = nullptr, const float* base_scale = nullptr);
void dispatch_combine(const DispatchPlan& p, const Routing& r, const bf16_t* Y, int d, float* y,
                      const float* base = nullptr, const float* base_scale = nullptr);
// dx (T, d): dx_t = Σ_i dX[pair_row(t,i)] over the kept pairs (dX (rows, d) in fp32 or bf16, summed in
// fp32); dx is overwritten.
void dispatch_scatter(const DispatchPlan& p, const float* dX, int d, float* dx);
void dispatch_scatter(const DispatchPlan& p, const bf16_t* dX, int d, float* dx);
// Per-pair values (T·k, e.g. the gates) to per-row values (rows), and back (pairs without a row get 0).
void pairs_to_rows(const DispatchPlan& p, const float* per_pair, float* per_row);
void rows_to_pairs(const DispatchPlan& p, const float* per_row, float* per_pair);

}  // namespace moe
