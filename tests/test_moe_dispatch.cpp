// The dispatch plan on hand-made routings: exact rows, kept pairs and dropped counts for the
// dropless default and both drop policies; the gather, combine and scatter over such a plan.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/bf16.h"
#include "moe/dispatch.h"

namespace moe {
namespace {

// T = 6 tokens, k = 2, E = 3. Expert 0 is chosen 6 times, expert 1 four times, expert 2 twice.
Routing hand_made() {
  Routing r;
  r.T = 6;
  r.k = 2;
  r.expert = {0, 1, /**/ 0, 2, /**/ 0, 1, /**/ 1, 0, /**/ 2, 0, /**/ 0, 1};
  //          j=0  1       2  3       4  5       6  7       8  9       10 11
  r.gate = {0.1f, 0.9f, 0.8f, 0.2f, 0.3f, 0.7f, 0.6f, 0.4f, 0.55f, 0.45f, 0.65f, 0.35f};
  return r;
}

TEST(DispatchPlan, DroplessKeepsEveryPairInTokenOrder) {
  DispatchPlan p = make_dispatch_plan(hand_made(), 3, 0.f, DropPolicy::position);
  EXPECT_EQ(p.capacity, -1);
  EXPECT_EQ(p.dropped, 0);
  EXPECT_EQ(p.routed, (std::vector<int32_t>{6, 4, 2}));
  EXPECT_EQ(p.counts, (std::vector<int32_t>{6, 4, 2}));
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 6, 10, 12}));
  // Expert 0's rows: pairs 0, 2, 4, 7, 9, 10; expert 1's: 1, 5, 6, 11; expert 2's: 3, 8.
  EXPECT_EQ(p.pair_row, (std::vector<int32_t>{0, 6, 1, 10, 2, 7, 8, 3, 11, 4, 5, 9}));
  EXPECT_EQ(p.row_token, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 0, 2, 3, 5, 1, 4}));
}

TEST(DispatchPlan, CapacityByPositionDropsTheLatePairs) {
  // C = ceil(1.0 · 6 · 2 / 3) = 4: expert 0 keeps pairs 0, 2, 4, 7 and drops 9 and 10.
  DispatchPlan p = make_dispatch_plan(hand_made(), 3, 1.0f, DropPolicy::position);
  EXPECT_EQ(p.capacity, 4);
  EXPECT_EQ(p.dropped, 2);
  EXPECT_FLOAT_EQ(p.dropped_fraction(), 2.f / 12.f);
  EXPECT_EQ(p.counts, (std::vector<int32_t>{4, 4, 2}));
  EXPECT_EQ(p.pair_row[9], -1);
  EXPECT_EQ(p.pair_row[10], -1);
  for (int j : {0, 2, 4, 7}) EXPECT_GE(p.pair_row[j], 0) << j;
  // C = ceil(0.5 · 12 / 3) = 2: expert 0 keeps 0, 2 (drops 4); expert 1 keeps 1, 5 (drops 2); expert 2 keeps both.
  DispatchPlan q = make_dispatch_plan(hand_made(), 3, 0.5f, DropPolicy::position);
  EXPECT_EQ(q.capacity, 2);
  EXPECT_EQ(q.dropped, 6);
  EXPECT_EQ(q.counts, (std::vector<int32_t>{2, 2, 2}));
  for (int j : {4, 7, 9, 10, 6, 11}) EXPECT_EQ(q.pair_row[j], -1) << j;
}

TEST(DispatchPlan, CapacityByProbsDropsTheSmallestGates) {
  // Expert 0's gates: j0 0.1, j2 0.8, j4 0.3, j7 0.4, j9 0.45, j10 0.65 → with C = 4 drop j0 and j4.
  DispatchPlan p = make_dispatch_plan(hand_made(), 3, 1.0f, DropPolicy::probs);
  EXPECT_EQ(p.dropped, 2);
  EXPECT_EQ(p.pair_row[0], -1);
  EXPECT_EQ(p.pair_row[4], -1);
  for (int j : {2, 7, 9, 10}) EXPECT_GE(p.pair_row[j], 0) << j;
  // Kept rows stay in token order within the expert.
  EXPECT_LT(p.pair_row[2], p.pair_row[7]);
  EXPECT_LT(p.pair_row[7], p.pair_row[9]);
  // C = 2: expert 0 keeps j2 (0.8), j10 (0.65); expert 1 (j1 0.9, j5 0.7, j6 0.6, j11 0.35) keeps j1, j5.
  DispatchPlan q = make_dispatch_plan(hand_made(), 3, 0.5f, DropPolicy::probs);
  EXPECT_EQ(q.dropped, 6);
  for (int j : {0, 4, 7, 9, 6, 11}) EXPECT_EQ(q.pair_row[j], -1) << j;
  for (int j : {2, 10, 1, 5, 3, 8}) EXPECT_GE(q.pair_row[j], 0) << j;
}

TEST(DispatchPlan, CapacityFormula) {
  EXPECT_EQ(expert_capacity(1.25f, 4096, 1, 8), 640);
  EXPECT_EQ(expert_capacity(1.0f, 10, 2, 3), 7);  // ceil(6.67)
  EXPECT_EQ(expert_capacity(0.f, 10, 2, 3), -1);
  EXPECT_EQ(expert_capacity(-1.f, 10, 2, 3), -1);
}

// fp32 and bf16 rows, dropless and with dropped pairs, with widths whose rows fill whole 64-byte lines
// in aligned buffers (token by token, streamed) and widths that do not (row by row).
TEST(DispatchPlan, GatherCopiesTokenRows) {
  for (float cf : {0.f, 1.f}) {
    DispatchPlan p = make_dispatch_plan(hand_made(), 3, cf, DropPolicy::position);
    ASSERT_EQ(p.dropped, cf > 0 ? 2 : 0);
    for (int d : {3, 16, 32, 48}) {
      std::vector<float> x(6 * static_cast<size_t>(d));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i)) * 5.f;
      std::vector<float, aligned_allocator<float>> buf(static_cast<size_t>(p.rows()) * d, -1.f);
      bf16_vector bufb(buf.size(), 0);
      dispatch_gather(p, x.data(), d, buf.data());
      dispatch_gather(p, x.data(), d, bufb.data());
      for (int64_t row = 0; row < p.rows(); ++row)
        for (int j = 0; j < d; ++j) {
          const float want = x[static_cast<size_t>(p.row_token[row]) * d + j];
          ASSERT_EQ(buf[row * d + j], want) << "d " << d << " row " << row;
          ASSERT_EQ(bufb[row * d + j], float_to_bf16(want)) << "d " << d << " row " << row;
        }
    }
  }
}

// Combine (gated, over a base with its scale) and scatter (plain sums) of fp32 and bf16 rows, with a
// capacity that drops pairs: each token's kept rows, summed in its choice order, as a loop would.
TEST(DispatchPlan, CombineAndScatterSumTheKeptRows) {
  const Routing r = hand_made();
  DispatchPlan p = make_dispatch_plan(r, 3, 1.f, DropPolicy::position);  // capacity 4: expert 0 drops 2
  ASSERT_EQ(p.dropped, 2);
  const int d = 40;  // two 16-wide steps and a tail of 8
  std::vector<float> rows(static_cast<size_t>(p.rows()) * d), base(6 * d), scale(6);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = std::sin(static_cast<float>(i)) * 3.f;
  for (size_t i = 0; i < base.size(); ++i) base[i] = std::cos(static_cast<float>(i));
  for (int t = 0; t < 6; ++t) scale[t] = 0.5f + 0.1f * static_cast<float>(t);
  std::vector<bf16_t> rows_b(rows.size());
  to_bf16(rows.data(), rows_b.data(), rows.size());
  for (bool bf16 : {false, true}) {
    auto row = [&](int32_t rw, int j) {
      const size_t i = static_cast<size_t>(rw) * d + j;
      return bf16 ? bf16_to_float(rows_b[i]) : rows[i];
    };
    std::vector<float> y(6 * d), dx(6 * d, 9.f);
    if (bf16) {
      dispatch_combine(p, r, rows_b.data(), d, y.data(), base.data(), scale.data());
      dispatch_scatter(p, rows_b.data(), d, dx.data());
    } else {
      dispatch_combine(p, r, rows.data(), d, y.data(), base.data(), scale.data());
      dispatch_scatter(p, rows.data(), d, dx.data());
    }
    for (int t = 0; t < 6; ++t)
      for (int j = 0; j < d; ++j) {
        float want_y = scale[t] * base[t * d + j], want_dx = 0.f;
        for (int i = 0; i < 2; ++i) {
          const int32_t rw = p.pair_row[t * 2 + i];
          if (rw < 0) continue;
          want_y = std::fma(r.gate[t * 2 + i], row(rw, j), want_y);
          want_dx += row(rw, j);
        }
        EXPECT_NEAR(y[t * d + j], want_y, 1e-6f * (1.f + std::fabs(want_y))) << bf16 << " token " << t << " col " << j;
        EXPECT_EQ(dx[t * d + j], want_dx) << bf16 << " token " << t << " col " << j;
      }
  }
}

}  // namespace
}  // namespace moe
