#include "moe/dispatch.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "core/bf16.h"
#include "core/parallel.h"

namespace moe {

std::vector<uint8_t> capacity_keep(const Routing& r, int E, int64_t capacity, DropPolicy policy) {
  const size_t n = static_cast<size_t>(r.T) * r.k;
  std::vector<uint8_t> keep(n, 1);
  if (capacity < 0) return keep;
  if (policy == DropPolicy::position) {
    std::vector<int64_t> filled(static_cast<size_t>(E), 0);
    for (size_t j = 0; j < n; ++j)
      if (r.expert[j] >= 0) keep[j] = filled[r.expert[j]]++ < capacity;
    return keep;
  }
  // Bucket pairs by expert (in token order), then keep each bucket's C largest gates.
  std::vector<int64_t> start(static_cast<size_t>(E) + 1, 0);
  for (size_t j = 0; j < n; ++j)
    if (r.expert[j] >= 0) ++start[r.expert[j] + 1];
  for (int e = 0; e < E; ++e) start[e + 1] += start[e];
  std::vector<int32_t> bucket(n);
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (size_t j = 0; j < n; ++j)
    if (r.expert[j] >= 0) bucket[fill[r.expert[j]]++] = static_cast<int32_t>(j);
  for (int e = 0; e < E; ++e) {
    auto b = bucket.begin() + start[e], en = bucket.begin() + start[e + 1];
    if (en - b <= capacity) continue;
    std::stable_sort(b, en, [&](int32_t x, int32_t y) { return r.gate[x] > r.gate[y]; });
    for (auto it = b + capacity; it != en; ++it) keep[*it] = 0;
  }
  return keep;
}

DispatchPlan make_dispatch_plan(const Routing& r, int E, float capacity_factor, DropPolicy policy) {
  const int64_t capacity = expert_capacity(capacity_factor, r.T, r.k, E);
  return make_dispatch_plan(r, E, capacity, capacity_keep(r, E, capacity, policy));
}

DispatchPlan make_dispatch_plan(const Routing& r, int E, int64_t capacity, const std::vector<uint8_t>& keep) {
  DispatchPlan p;
  p.T = r.T;
  p.k = r.k;
  p.E = E;
  p.capacity = capacity;
  const size_t n = static_cast<size_t>(r.T) * r.k;
  p.routed.assign(static_cast<size_t>(E), 0);
  for (size_t j = 0; j < n; ++j)
    if (r.expert[j] >= 0) ++p.routed[r.expert[j]];
  p.counts.assign(static_cast<size_t>(E), 0);
  for (size_t j = 0; j < n; ++j)
    if (keep[j] && r.expert[j] >= 0) ++p.counts[r.expert[j]];
  p.offsets.assign(static_cast<size_t>(E) + 1, 0);
  for (int e = 0; e < E; ++e) p.offsets[e + 1] = p.offsets[e] + p.counts[e];
  p.pair_row.assign(n, -1);
  p.row_token.resize(static_cast<size_t>(p.rows()));
  p.row_pair.resize(static_cast<size_t>(p.rows()));
  std::vector<int64_t> next(p.offsets.begin(), p.offsets.end() - 1);
  for (size_t j = 0; j < n; ++j) {
    if (r.expert[j] < 0) continue;  // an empty slot (expert choice): neither routed nor dropped
    if (!keep[j]) {
      ++p.dropped;
      continue;
    }
    int64_t row = next[r.expert[j]]++;
    p.pair_row[j] = static_cast<int32_t>(row);
    p.row_token[row] = static_cast<int32_t>(j / r.k);
    p.row_pair[row] = static_cast<int32_t>(j);
  }
  return p;
}

#if defined(__AVX512F__)
// Token by token: x_t is read (and, for bf16, rounded) once and its d values streamed to each of the
// token's k buffer rows. Row by row, x_t would be read k times from wherever it sits (x is larger
// than L2 at T = 4096) and rounded k times. Streaming stores: the buffer is much larger than the
// caches and is read back by the expert GEMMs much later, so each destination line skips its
// read-for-ownership. Needs 64-byte rows in a 64-byte aligned buffer; false otherwise (nothing done).
template <class T>
static bool gather_by_token(const DispatchPlan& p, const float* x, int d, T* buf) {
  const size_t row_bytes = sizeof(T) * static_cast<size_t>(d);
  if (row_bytes % 64 != 0 || reinterpret_cast<uintptr_t>(buf) % 64 != 0) return false;
  const int k = p.k;
  parallel_for(static_cast<size_t>(p.T), [&](size_t t) {
    const char* src = reinterpret_cast<const char*>(x + t * d);
    if constexpr (std::is_same_v<T, bf16_t>) {
      thread_local bf16_vector rounded;
      rounded.resize(static_cast<size_t>(d));
      to_bf16(x + t * d, rounded.data(), static_cast<size_t>(d));
      src = reinterpret_cast<const char*>(rounded.data());
    }
    for (int i = 0; i < k; ++i) {
      const int32_t row = p.pair_row[t * k + i];
      if (row < 0) continue;
      char* dst = reinterpret_cast<char*>(buf + static_cast<size_t>(row) * d);
      for (size_t j = 0; j < row_bytes; j += 64)
        _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + j), _mm512_loadu_si512(src + j));
    }
  }, 64);
  _mm_sfence();
  return true;
}
#endif

void dispatch_gather(const DispatchPlan& p, const float* x, int d, float* buf) {
#if defined(__AVX512F__)
  if (gather_by_token(p, x, d, buf)) return;
#endif
  parallel_for(static_cast<size_t>(p.rows()), [&](size_t row) {
    std::memcpy(buf + row * d, x + static_cast<size_t>(p.row_token[row]) * d, sizeof(float) * d);
  }, 512);
}

void dispatch_gather(const DispatchPlan& p, const float* x, int d, bf16_t* buf) {
#if defined(__AVX512F__)
  if (gather_by_token(p, x, d, buf)) return;
#endif
  parallel_for(static_cast<size_t>(p.rows()), [&](size_t row) {
    to_bf16(x + static_cast<size_t>(p.row_token[row]) * d, buf + row * d, static_cast<size_t>(d));
  }, 512);
}

// y_t = a_t·base_t + Σ_i g_{t,i}·X[pair_row(t,i)] (gate null: g = 1; base null: y_t starts at 0), token
// by token: one task per token, no atomics. The k rows of a token lie in k different experts' blocks,
// so the rows kAhead pairs on are prefetched while this one is summed.
constexpr int kAhead = 2;  // pairs ahead (the next token's first rows while this one's last are summed)
template <class X>
static void sum_rows(const DispatchPlan& p, const float* gate, const X* Xbuf, int d, float* y, const float* base,
                     const float* base_scale) {
  const int k = p.k;
  parallel_for(static_cast<size_t>(p.T), [&](size_t t) {
    float* yt = y + t * d;
    if (base) {
      const float s = base_scale ? base_scale[t] : 1.f;
      const float* bt = base + t * d;
      for (int j = 0; j < d; ++j) yt[j] = s * bt[j];
    } else {
      std::memset(yt, 0, sizeof(float) * d);
    }
    const int32_t* rows = p.pair_row.data() + t * k;
    const size_t pairs = static_cast<size_t>(p.T) * k;
    for (int i = 0; i < k; ++i) {
      if (rows[i] < 0) continue;
      const size_t ahead = t * k + i + kAhead;
      if (ahead < pairs && p.pair_row[ahead] >= 0) {
        const X* next = Xbuf + static_cast<size_t>(p.pair_row[ahead]) * d;
        for (int j = 0; j < d; j += 64 / static_cast<int>(sizeof(X))) __builtin_prefetch(next + j);
      }
      const float g = gate ? gate[t * k + i] : 1.f;
      const X* xr = Xbuf + static_cast<size_t>(rows[i]) * d;
      if constexpr (std::is_same_v<X, bf16_t>) {
        add_scaled_bf16(g, xr, yt, static_cast<size_t>(d));
      } else {
        for (int j = 0; j < d; ++j) yt[j] += g * xr[j];
      }
    }
  }, 64);
}

void dispatch_combine(const DispatchPlan& p, const Routing& r, const float* Y, int d, float* y, const float* base,
                      const float* base_scale) {
  sum_rows(p, r.gate.data(), Y, d, y, base, base_scale);
}
void dispatch_combine(const DispatchPlan& p, const Routing& r, const bf16_t* Y, int d, float* y, const float* base,
                      const float* base_scale) {
  sum_rows(p, r.gate.data(), Y, d, y, base, base_scale);
}
void dispatch_scatter(const DispatchPlan& p, const float* dX, int d, float* dx) {
  sum_rows(p, nullptr, dX, d, dx, nullptr, nullptr);
}
void dispatch_scatter(const DispatchPlan& p, const bf16_t* dX, int d, float* dx) {
  sum_rows(p, nullptr, dX, d, dx, nullptr, nullptr);
}

void pairs_to_rows(const DispatchPlan& p, const float* per_pair, float* per_row) {
  for (int64_t r = 0; r < p.rows(); ++r) per_row[r] = per_pair[p.row_pair[r]];
}

void rows_to_pairs(const DispatchPlan& p, const float* per_row, float* per_pair) {
  std::fill(per_pair, per_pair + static_cast<size_t>(p.T) * p.k, 0.f);
  for (int64_t r = 0; r < p.rows(); ++r) per_pair[p.row_pair[r]] = per_row[r];
}

}  // namespace moe
