#include "moe/experts.h"

#include <algorithm>
#include <numeric>

#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/vmath.h"

namespace moe {

ExpertBank::ExpertBank(int n_experts, int d_model, int hidden, uint64_t seed, uint64_t stream, float init_std)
    : E(n_experts), d(d_model), h(hidden), w1({E, h, d}), w3({E, h, d}), w2({E, d, h}),
      dw1({E, h, d}), dw3({E, h, d}), dw2({E, d, h}) {
  fill_normal(w1.data(), w1.numel(), seed, stream, 0.f, init_std);
  fill_normal(w3.data(), w3.numel(), seed, stream + 1, 0.f, init_std);
  fill_normal(w2.data(), w2.numel(), seed, stream + 2, 0.f, init_std);
}

void ExpertBank::params(std::vector<Param>& out, const std::string& prefix) {
  out.push_back({prefix + "w1", &w1, &dw1});
  out.push_back({prefix + "w3", &w3, &dw3});
  out.push_back({prefix + "w2", &w2, &dw2});
}

bool ExpertBank::parallel_over_experts(const std::vector<int64_t>& offsets) const {
  const int threads = num_threads();
  if (threads <= 1) return false;
  int active = 0;
  for (int e = 0; e < E; ++e) active += offsets[e + 1] > offsets[e];
  // Enough independent experts to keep every thread busy with little imbalance, and each small
  // enough that splitting one GEMM over threads would not pay.
  return active >= 4 * threads || (active >= 2 * threads && h <= 256);
}

// The experts in order of decreasing row count: the biggest tasks start first (LPT scheduling).
static std::vector<int> by_size(const std::vector<int64_t>& offsets, int E) {
  std::vector<int> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
    return offsets[x + 1] - offsets[x] > offsets[y + 1] - offsets[y];
  });
  return order;
}

template <class F>
static void for_each_expert(bool parallel, const std::vector<int64_t>& offsets, int E, F&& fn) {
  std::vector<int> order = by_size(offsets, E);
  if (parallel) {
    parallel_for_dynamic(order.size(), [&](size_t i) { fn(order[i]); });
  } else {
    for (int e : order) fn(e);
  }
}

void ExpertBank::forward(const float* x, const std::vector<int64_t>& offsets, float* y) {
  const int64_t rows = offsets[static_cast<size_t>(E)];
  a.resize({rows, h});
  b.resize({rows, h});
  act.resize({rows, h});
  if (bf16) {
    forward_bf16(x, offsets, y);
    return;
  }
  const bool par = parallel_over_experts(offsets);
  for_each_expert(par, offsets, E, [&](int e) {
    const int64_t r0 = offsets[e];
    const int n = static_cast<int>(offsets[e + 1] - r0);
    if (n == 0) return;
    const size_t we = static_cast<size_t>(e) * h * d;
    float* ae = a.data() + r0 * h;
    float* be = b.data() + r0 * h;
    float* he = act.data() + r0 * h;
    sgemm(false, true, n, h, d, 1.f, x + r0 * d, d, w1.data() + we, d, 0.f, ae, h);
    sgemm(false, true, n, h, d, 1.f, x + r0 * d, d, w3.data() + we, d, 0.f, be, h);
    if (par) {
      swiglu(ae, be, he, static_cast<size_t>(n) * h);
    } else {
      parallel_for(static_cast<size_t>(n), [&](size_t i) { swiglu(ae + i * h, be + i * h, he + i * h, h); }, 64);
    }
    sgemm(false, true, n, d, h, 1.f, he, h, w2.data() + we, h, 0.f, y + r0 * d, d);
  });
}

void ExpertBank::backward(const float* x, const float* dy, const std::vector<int64_t>& offsets, float* dx) {
  if (bf16) {
    backward_bf16(dy, offsets, dx);
    return;
  }
  const bool par = parallel_over_experts(offsets);
  for_each_expert(par, offsets, E, [&](int e) {
    const int64_t r0 = offsets[e];
    const int n = static_cast<int>(offsets[e + 1] - r0);
    if (n == 0) return;
    const size_t we = static_cast<size_t>(e) * h * d;
    float* ae = a.data() + r0 * h;
    float* be = b.data() + r0 * h;
    float* he = act.data() + r0 * h;
    const float* xe = x + r0 * d;
    const float* dye = dy + r0 * d;
    // dW2 += dYᵀ·H, then dH = dY·W2 (into act: H is no longer needed).
    sgemm(true, false, d, h, n, 1.f, dye, d, he, h, 1.f, dw2.data() + we, h);
    sgemm(false, false, n, h, d, 1.f, dye, d, w2.data() + we, h, 0.f, he, h);
    // dA, dB in place of A, B.
    if (par) {
      swiglu_backward(ae, be, he, ae, be, static_cast<size_t>(n) * h);
    } else {
      parallel_for(static_cast<size_t>(n), [&](size_t i) {
        swiglu_backward(ae + i * h, be + i * h, he + i * h, ae + i * h, be + i * h, h);
      }, 64);
    }
    sgemm(true, false, h, d, n, 1.f, ae, h, xe, d, 1.f, dw1.data() + we, d);
    sgemm(true, false, h, d, n, 1.f, be, h, xe, d, 1.f, dw3.data() + we, d);
    sgemm(false, false, n, d, h, 1.f, ae, h, w1.data() + we, d, 0.f, dx + r0 * d, d);
    sgemm(false, false, n, d, h, 1.f, be, h, w3.data() + we, d, 1.f, dx + r0 * d, d);
  });
}

// ---- mixed precision ------------------------------------------------------------------------------

namespace {

// fp32 → bf16 of n values, split over the threads in blocks (serial inside a parallel region).
void convert(const float* src, std::vector<bf16_t>& dst, size_t n) {
  dst.resize(n);
  const size_t block = 1 << 14;
  parallel_for((n + block - 1) / block, [&](size_t i) {
    const size_t lo = i * block, len = std::min(block, n - lo);
    to_bf16(src + lo, dst.data() + lo, len);
  }, 2);
}

// h = silu(a) ⊙ b written as bf16, in tiles so the fp32 intermediate stays in L1.
void swiglu_to_bf16(const float* a, const float* b, bf16_t* h, size_t n) {
  float tile[256];
  for (size_t lo = 0; lo < n; lo += 256) {
    const size_t len = std::min<size_t>(256, n - lo);
    swiglu(a + lo, b + lo, tile, len);
    to_bf16(tile, h + lo, len);
  }
}

void swiglu_backward_to_bf16(const float* a, const float* b, const float* dh, bf16_t* da, bf16_t* db, size_t n) {
  float ta[256], tb[256];
  for (size_t lo = 0; lo < n; lo += 256) {
    const size_t len = std::min<size_t>(256, n - lo);
    swiglu_backward(a + lo, b + lo, dh + lo, ta, tb, len);
    to_bf16(ta, da + lo, len);
    to_bf16(tb, db + lo, len);
  }
}

// Row-blocked elementwise work on one expert's n×h block, split over threads unless already inside a
// parallel region.
template <class F>
void rows_apply(bool inside_parallel, int n, int h, F&& fn) {
  if (inside_parallel) {
    fn(size_t{0}, static_cast<size_t>(n) * h);
  } else {
    parallel_for(static_cast<size_t>(n), [&](size_t i) { fn(i * h, static_cast<size_t>(h)); }, 64);
  }
}

}  // namespace

void ExpertBank::forward_bf16(const float* x, const std::vector<int64_t>& offsets, float* y) {
  const int64_t rows = offsets[static_cast<size_t>(E)];
  convert(x, xb, static_cast<size_t>(rows) * d);
  convert(w1.data(), w1b, w1.numel());
  convert(w3.data(), w3b, w3.numel());
  convert(w2.data(), w2b, w2.numel());
  hb.resize(static_cast<size_t>(rows) * h);
  const bool par = parallel_over_experts(offsets);
  for_each_expert(par, offsets, E, [&](int e) {
    const int64_t r0 = offsets[e];
    const int n = static_cast<int>(offsets[e + 1] - r0);
    if (n == 0) return;
    const size_t we = static_cast<size_t>(e) * h * d;
    float* ae = a.data() + r0 * h;
    float* be = b.data() + r0 * h;
    bf16_t* he = hb.data() + r0 * h;
    const bf16_t* xe = xb.data() + r0 * d;
    gemm_bf16(false, true, n, h, d, xe, d, w1b.data() + we, d, 0.f, ae, h);
    gemm_bf16(false, true, n, h, d, xe, d, w3b.data() + we, d, 0.f, be, h);
    rows_apply(par, n, h, [&](size_t lo, size_t len) { swiglu_to_bf16(ae + lo, be + lo, he + lo, len); });
    gemm_bf16(false, true, n, d, h, he, h, w2b.data() + we, h, 0.f, y + r0 * d, d);
  });
}

void ExpertBank::backward_bf16(const float* dy, const std::vector<int64_t>& offsets, float* dx) {
  const int64_t rows = offsets[static_cast<size_t>(E)];
  convert(dy, dyb, static_cast<size_t>(rows) * d);
  dab.resize(static_cast<size_t>(rows) * h);
  dbb.resize(static_cast<size_t>(rows) * h);
  const bool par = parallel_over_experts(offsets);
  for_each_expert(par, offsets, E, [&](int e) {
    const int64_t r0 = offsets[e];
    const int n = static_cast<int>(offsets[e + 1] - r0);
    if (n == 0) return;
    const size_t we = static_cast<size_t>(e) * h * d;
    float* ae = a.data() + r0 * h;
    float* be = b.data() + r0 * h;
    float* dhe = act.data() + r0 * h;
    const bf16_t* xe = xb.data() + r0 * d;
    const bf16_t* dye = dyb.data() + r0 * d;
    bf16_t* dae = dab.data() + r0 * h;
    bf16_t* dbe = dbb.data() + r0 * h;
    gemm_bf16(true, false, d, h, n, dye, d, hb.data() + r0 * h, h, 1.f, dw2.data() + we, h);
    gemm_bf16(false, false, n, h, d, dye, d, w2b.data() + we, h, 0.f, dhe, h);
    rows_apply(par, n, h, [&](size_t lo, size_t len) {
      swiglu_backward_to_bf16(ae + lo, be + lo, dhe + lo, dae + lo, dbe + lo, len);
    });
    gemm_bf16(true, false, h, d, n, dae, h, xe, d, 1.f, dw1.data() + we, d);
    gemm_bf16(true, false, h, d, n, dbe, h, xe, d, 1.f, dw3.data() + we, d);
    gemm_bf16(false, false, n, d, h, dae, h, w1b.data() + we, d, 0.f, dx + r0 * d, d);
    gemm_bf16(false, false, n, d, h, dbe, h, w3b.data() + we, d, 1.f, dx + r0 * d, d);
  });
}

}  // namespace moe
