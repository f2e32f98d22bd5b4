#include "moe/experts.h"

#include <algorithm>
#include <numeric>
#include <type_traits>

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

namespace {

// fp32 → bf16 of n values, split over the threads in blocks (serial inside a parallel region).
void convert(const float* src, bf16_vector& dst, size_t n) {
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

// One row of the gated SwiGLU backward, given a, b (h) and dH = dz·W2 before gating:
//   returns dg = Σ_j h_j·dH_j with h = silu(a) ⊙ b (the gate's gradient),
//   writes da, db = swiglu_backward(a, b, g·dH) and gh = g·h (the input of the dW2 GEMM).
// Outputs may alias a, b (and gh may alias h_in); bf16 outputs are rounded here.
template <class Out>
float gated_swiglu_backward(const float* a, const float* b, const float* h_in, const float* dh, float g, int h,
                            Out* da, Out* db, Out* gh) {
  float ta[256], tb[256], th[256], tdh[256];
  float dg = 0.f;
  for (int lo = 0; lo < h; lo += 256) {
    const int len = std::min(256, h - lo);
    if (h_in) {
      std::copy(h_in + lo, h_in + lo + len, th);
    } else {
      swiglu(a + lo, b + lo, th, static_cast<size_t>(len));
    }
    for (int j = 0; j < len; ++j) {
      dg += th[j] * dh[lo + j];
      tdh[j] = g * dh[lo + j];
      th[j] *= g;
    }
    swiglu_backward(a + lo, b + lo, tdh, ta, tb, static_cast<size_t>(len));
    if constexpr (std::is_same_v<Out, float>) {
      std::copy(ta, ta + len, da + lo);
      std::copy(tb, tb + len, db + lo);
      std::copy(th, th + len, gh + lo);
    } else {
      to_bf16(ta, da + lo, static_cast<size_t>(len));
      to_bf16(tb, db + lo, static_cast<size_t>(len));
      to_bf16(th, gh + lo, static_cast<size_t>(len));
    }
  }
  return dg;
}

// fn(i0, i1) over the rows [0, n) of one expert: all at once inside a parallel region (one expert per
// thread), else split over the threads.
template <class F>
void rows_apply(bool inside_parallel, int n, F&& fn) {
  if (inside_parallel) {
    fn(0, n);
    return;
  }
  const int chunks = std::max(1, std::min(n / 16, 4 * num_threads()));
  parallel_for(static_cast<size_t>(chunks), [&](size_t c) {
    fn(static_cast<int>(c * n / chunks), static_cast<int>((c + 1) * n / chunks));
  }, 1);
}

}  // namespace

void ExpertBank::forward(const float* x, const std::vector<int64_t>& offsets, float* y) {
  const int64_t rows = offsets[static_cast<size_t>(E)];
  a.resize({rows, h});
  b.resize({rows, h});
  act.resize({rows, h});
  if (bf16) {
    convert(x, xb, static_cast<size_t>(rows) * d);
    yb.resize(static_cast<size_t>(rows) * d);
    forward_bf16(offsets, yb.data());
    parallel_for(static_cast<size_t>(rows) * d, [&](size_t i) { y[i] = bf16_to_float(yb[i]); });
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
    rows_apply(par, n, [&](int i0, int i1) {
      const size_t o = static_cast<size_t>(i0) * h, len = static_cast<size_t>(i1 - i0) * h;
      swiglu(ae + o, be + o, he + o, len);
    });
    sgemm(false, true, n, d, h, 1.f, he, h, w2.data() + we, h, 0.f, y + r0 * d, d);
  });
}

void ExpertBank::backward(const float* x, const float* dz, const std::vector<int64_t>& offsets, const float* gate,
                          float* dx, float* dgate) {
  const int64_t rows = offsets[static_cast<size_t>(E)];
  if (bf16) {
    convert(dz, dyb, static_cast<size_t>(rows) * d);
    backward_bf16(offsets, gate, dx, dgate);
    return;
  }
  dh.resize({rows, h});
  const bool par = parallel_over_experts(offsets);
  for_each_expert(par, offsets, E, [&](int e) {
    const int64_t r0 = offsets[e];
    const int n = static_cast<int>(offsets[e + 1] - r0);
    if (n == 0) return;
    const size_t we = static_cast<size_t>(e) * h * d;
    float* ae = a.data() + r0 * h;
    float* be = b.data() + r0 * h;
    float* he = act.data() + r0 * h;
    float* dhe = dh.data() + r0 * h;
    const float* xe = x + r0 * d;
    const float* dze = dz + r0 * d;
    // dH = dZ·W2 (ungated); per row: dg = h·dH, then dA, dB in place of A, B and g·h in place of h.
    sgemm(false, false, n, h, d, 1.f, dze, d, w2.data() + we, h, 0.f, dhe, h);
    rows_apply(par, n, [&](int i0, int i1) {
      for (int i = i0; i < i1; ++i) {
        const size_t o = static_cast<size_t>(i) * h;
        const float g = gate ? gate[r0 + i] : 1.f;
        const float dg = gated_swiglu_backward(ae + o, be + o, he + o, dhe + o, g, h, ae + o, be + o, he + o);
        if (dgate) dgate[r0 + i] = dg;
      }
    });
    sgemm(true, false, d, h, n, 1.f, dze, d, he, h, 1.f, dw2.data() + we, h);
    sgemm(true, false, h, d, n, 1.f, ae, h, xe, d, 1.f, dw1.data() + we, d);
    sgemm(true, false, h, d, n, 1.f, be, h, xe, d, 1.f, dw3.data() + we, d);
    sgemm(false, false, n, d, h, 1.f, ae, h, w1.data() + we, d, 0.f, dx + r0 * d, d);
    sgemm(false, false, n, d, h, 1.f, be, h, w3.data() + we, d, 1.f, dx + r0 * d, d);
  });
}

// ---- mixed precision ------------------------------------------------------------------------------


void ExpertBank::forward_bf16(const std::vector<int64_t>& offsets, bf16_t* y) {
  const int64_t rows = offsets[static_cast<size_t>(E)];
  a.resize({rows, h});
  b.resize({rows, h});
  act.resize({rows, h});
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
    rows_apply(par, n, [&](int i0, int i1) {
      const size_t o = static_cast<size_t>(i0) * h, len = static_cast<size_t>(i1 - i0) * h;
      swiglu_to_bf16(ae + o, be + o, he + o, len);
    });
    gemm_bf16_out(false, true, n, d, h, he, h, w2b.data() + we, h, y + r0 * d, d);
  });
}

void ExpertBank::backward_bf16(const std::vector<int64_t>& offsets, const float* gate, float* dx, float* dgate) {
  const int64_t rows = offsets[static_cast<size_t>(E)];
  dh.resize({rows, h});
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
    float* dhe = dh.data() + r0 * h;
    bf16_t* ghe = hb.data() + r0 * h;
    const bf16_t* xe = xb.data() + r0 * d;
    const bf16_t* dze = dyb.data() + r0 * d;
    bf16_t* dae = dab.data() + r0 * h;
    bf16_t* dbe = dbb.data() + r0 * h;
    gemm_bf16(false, false, n, h, d, dze, d, w2b.data() + we, h, 0.f, dhe, h);
    rows_apply(par, n, [&](int i0, int i1) {
      for (int i = i0; i < i1; ++i) {
        const size_t o = static_cast<size_t>(i) * h;
        const float g = gate ? gate[r0 + i] : 1.f;
        const float dg = gated_swiglu_backward(ae + o, be + o, nullptr, dhe + o, g, h, dae + o, dbe + o, ghe + o);
        if (dgate) dgate[r0 + i] = dg;
      }
    });
    gemm_bf16(true, false, d, h, n, dze, d, ghe, h, 1.f, dw2.data() + we, h);
    gemm_bf16(true, false, h, d, n, dae, h, xe, d, 1.f, dw1.data() + we, d);
    gemm_bf16(true, false, h, d, n, dbe, h, xe, d, 1.f, dw3.data() + we, d);
    gemm_bf16(false, false, n, d, h, dae, h, w1b.data() + we, d, 0.f, dx + r0 * d, d);
    gemm_bf16(false, false, n, d, h, dbe, h, w3b.data() + we, d, 1.f, dx + r0 * d, d);
  });
}

}  // namespace moe
