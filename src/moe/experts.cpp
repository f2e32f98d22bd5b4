#include "moe/experts.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <type_traits>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/vmath.h"

namespace moe {

ExpertBank::ExpertBank(int n_experts, int d_model, int hidden, uint64_t seed, uint64_t stream, float init_std,
                       int first_expert, int total_experts)
    : E(n_experts), d(d_model), h(hidden), first(first_expert), total(total_experts), w1({E, h, d}), w3({E, h, d}),
      w2({E, d, h}), dw1({E, h, d}), dw3({E, h, d}), dw2({E, d, h}) {
  const uint64_t skip = static_cast<uint64_t>(first) * static_cast<uint64_t>(h) * static_cast<uint64_t>(d);
  init_normal(w1.data(), w1.numel(), seed, stream, 0.f, init_std, skip);
  init_normal(w3.data(), w3.numel(), seed, stream + 1, 0.f, init_std, skip);
  init_normal(w2.data(), w2.numel(), seed, stream + 2, 0.f, init_std, skip);
}

void ExpertBank::params(std::vector<Param>& out, const std::string& prefix) {
  const RowShard shard{total > 0 ? first : 0, total};
  out.push_back({prefix + "w1", &w1, &dw1, shard});
  out.push_back({prefix + "w3", &w3, &dw3, shard});
  out.push_back({prefix + "w2", &w2, &dw2, shard});
}

bool ExpertBank::parallel_over_experts(const std::vector<int64_t>& offsets) const {
  const int threads = num_threads();
  if (threads <= 1) return false;
  int active = 0;
  int64_t fewest = INT64_MAX, most = 0;
  for (int e = 0; e < E; ++e) {
    const int64_t n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    ++active;
    fewest = std::min(fewest, n);
    most = std::max(most, n);
  }
  // Enough independent experts to keep every thread busy with little imbalance, and each small
  // enough that splitting one GEMM over threads would not pay. Decoding (a few rows an expert, as
  // many in each) spreads equal experts evenly over the threads: one parallel region for all of
  // them instead of one for each of their products.
  return active >= 4 * threads || (active >= 2 * threads && h <= 256) ||
         (active % threads == 0 && fewest == most && most <= 8);
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
    // A vectorised sum (16 lanes, then across them): without the pragma GCC keeps a float sum in
    // order, one dependent add a value (a third of the experts' non-GEMM backward).
#pragma omp simd reduction(+ : dg)
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
// thread) or when there are too few rows to split (decoding), else split over the threads.
template <class F>
void rows_apply(bool inside_parallel, int n, F&& fn) {
  const int chunks = std::max(1, std::min(n / 16, 4 * num_threads()));
  if (inside_parallel || chunks == 1) {
    fn(0, n);
    return;
  }
  parallel_for(static_cast<size_t>(chunks), [&](size_t c) {
    fn(static_cast<int>(c * n / chunks), static_cast<int>((c + 1) * n / chunks));
  }, 1);
}

// One multiply of the expert pass, C = op(A)·op(B) (+ C when beta = 1) with row strides lda, ldb, ldc:
// sgemm for fp32 inputs, the oneDNN bf16 matmul for bf16 inputs (fp32 or bf16 output).
void mm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float beta, float* C,
        int ldc) {
  sgemm(ta, tb, M, N, K, 1.f, A, lda, B, ldb, beta, C, ldc);
}
void mm(bool ta, bool tb, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B, int ldb, float beta,
        float* C, int ldc) {
  gemm_bf16(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
}
void mm(bool ta, bool tb, int M, int N, int K, const bf16_t* A, int lda, const bf16_t* B, int ldb, float, bf16_t* C,
        int ldc) {
  gemm_bf16_out(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
}

void swiglu_into(const float* a, const float* b, float* h, size_t n) { swiglu(a, b, h, n); }
void swiglu_into(const float* a, const float* b, bf16_t* h, size_t n) { swiglu_to_bf16(a, b, h, n); }

}  // namespace

// The grouped SwiGLU over the expert-contiguous buffer, for In = float (fp32) or bf16_t (mixed):
// x (rows, d) in In; [A | B] (rows, 2h) in fp32; H (rows, h) in In; y (rows, d) in Out.
template <class In, class Out, class Mul13, class Mul2>
void ExpertBank::forward_pass(const In* x, In* hbuf, const std::vector<int64_t>& offsets, Out* y, Mul13&& mul13,
                              Mul2&& mul2) {
  const bool par = parallel_over_experts(offsets);
  for_each_expert(par, offsets, E, [&](int e) {
    const int64_t r0 = offsets[e];
    const int n = static_cast<int>(offsets[e + 1] - r0);
    if (n == 0) return;
    float* abe = ab.data() + r0 * 2 * h;
    In* he = hbuf + r0 * h;
    mul13(e, n, x + r0 * d, abe);
    rows_apply(par, n, [&](int i0, int i1) {
      for (int i = i0; i < i1; ++i) {
        const float* abr = abe + static_cast<size_t>(i) * 2 * h;
        swiglu_into(abr, abr + h, he + static_cast<size_t>(i) * h, static_cast<size_t>(h));
      }
    });
    mul2(e, n, he, y + r0 * d);
  });
}

// W1_e and W3_e of every expert at w1p + e·w13_stride and w3p + e·w13_stride are stacked, [W1_e; W3_e]
// (2h, d): one matrix for the [a | b] and dX GEMMs.
template <class In>
static bool w13_stacked(const In* w1p, const In* w3p, size_t w13_stride, int h, int d) {
  const size_t hd = static_cast<size_t>(h) * d;
  return w13_stride == 2 * hd && w3p == w1p + hd;
}

// The products of forward_pass with weights stored in In: W1_e and W3_e at w1p, w3p + e·w13_stride
// (stacked, [W1_e; W3_e], when w13_stride = 2hd and w3p = w1p + hd: one GEMM), W2_e at w2p + e·hd.
template <class In>
static auto dense_mul13(const In* w1p, const In* w3p, size_t w13_stride, int h, int d) {
  return [=](int e, int n, const In* in, float* out) {
    const size_t we = static_cast<size_t>(e) * w13_stride;
    if (w13_stacked(w1p, w3p, w13_stride, h, d)) {
      mm(false, true, n, 2 * h, d, in, d, w1p + we, d, 0.f, out, 2 * h);
    } else {
      mm(false, true, n, h, d, in, d, w1p + we, d, 0.f, out, 2 * h);
      mm(false, true, n, h, d, in, d, w3p + we, d, 0.f, out + h, 2 * h);
    }
  };
}
template <class In>
static auto dense_mul2(const In* w2p, int h, int d) {
  return [=](int e, int n, const In* in, auto* out) {
    mm(false, true, n, d, h, in, h, w2p + static_cast<size_t>(e) * h * d, h, 0.f, out, d);
  };
}

// Backward of the gated pass (see experts.h), for In = float or bf16_t: dz (rows, d) and the weights
// in In (W1, W3 as in dense_mul13); w13t and w2t, when not null, hold [W1_e; W3_e]ᵀ (d, 2h) and W2_eᵀ
// (h, d) at e·w13_stride and e·hd, and dX and dH run on them as A·Bᵀ (bf16_transpose_weights); h_fp32
// is H in fp32 when kept (fp32 mode) or null (recomputed from A, B); [dA | dB] and g·H are written
// into dab_out (rows, 2h) and gh_out (in place of [A | B] and H in fp32 mode); dX (rows, d) into dx
// in Out (bf16 only with stacked W1, W3: one GEMM, one rounding).
template <class In, class Out>
void ExpertBank::backward_pass(const In* x, const In* dz, const In* w1p, const In* w3p, size_t w13_stride,
                               const In* w2p, const In* w13t, const In* w2t, const float* h_fp32, In* dab_out,
                               In* gh_out, const std::vector<int64_t>& offsets, const float* gate, Out* dx,
                               float* dgate) {
  const size_t hd = static_cast<size_t>(h) * d;
  const bool stacked = w13_stacked(w1p, w3p, w13_stride, h, d);
  MOE_CHECK((stacked || std::is_same_v<Out, float>), "experts: a bf16 dX needs W1 and W3 stacked");
  dh.resize({offsets[static_cast<size_t>(E)], h});
  const bool par = parallel_over_experts(offsets);
  const int h2 = 2 * h;
  for_each_expert(par, offsets, E, [&](int e) {
    const int64_t r0 = offsets[e];
    const int n = static_cast<int>(offsets[e + 1] - r0);
    if (n == 0) return;
    const size_t we = static_cast<size_t>(e) * hd, w13 = static_cast<size_t>(e) * w13_stride;
    const size_t o0 = static_cast<size_t>(r0) * h, o20 = 2 * o0;
    const In* xe = x + r0 * d;
    const In* dze = dz + r0 * d;
    float* dhe = dh.data() + o0;
    // dH = dZ·W2 (ungated); per row: dg = h·dH, then dA, dB and g·h.
    if (w2t)
      mm(false, true, n, h, d, dze, d, w2t + we, d, 0.f, dhe, h);
    else
      mm(false, false, n, h, d, dze, d, w2p + we, h, 0.f, dhe, h);
    rows_apply(par, n, [&](int i0, int i1) {
      for (int i = i0; i < i1; ++i) {
        const size_t o = o0 + static_cast<size_t>(i) * h, o2 = 2 * o;
        const float g = gate ? gate[r0 + i] : 1.f;
        const float dg = gated_swiglu_backward(ab.data() + o2, ab.data() + o2 + h, h_fp32 ? h_fp32 + o : nullptr,
                                               dh.data() + o, g, h, dab_out + o2, dab_out + o2 + h, gh_out + o);
        if (dgate) dgate[r0 + i] = dg;
      }
    });
    mm(true, false, d, h, n, dze, d, gh_out + o0, h, 1.f, dw2.data() + we, h);
    // dW1_e += dAᵀ·X and dW3_e += dBᵀ·X, accumulated by the GEMMs themselves, though X is read twice:
    // faster than one [dA dB]ᵀ·X into a scratch then added to dW1 and dW3 (one thread, T = 4096, bf16:
    // 3.3 against 4.7 ms at G = 1, 4.4 against 5.2 at G = 8; fp32 the same or faster).
    mm(true, false, h, d, n, dab_out + o20, h2, xe, d, 1.f, dw1.data() + we, d);
    mm(true, false, h, d, n, dab_out + o20 + h, h2, xe, d, 1.f, dw3.data() + we, d);
    Out* dxe = dx + r0 * d;
    if (stacked && w13t) {  // dX = [dA dB]·([W1_e; W3_e]ᵀ)ᵀ
      mm(false, true, n, d, h2, dab_out + o20, h2, w13t + w13, h2, 0.f, dxe, d);
    } else if (stacked) {  // dX = [dA dB]·[W1_e; W3_e]
      mm(false, false, n, d, h2, dab_out + o20, h2, w1p + w13, d, 0.f, dxe, d);
    } else if constexpr (std::is_same_v<Out, float>) {
      mm(false, false, n, d, h, dab_out + o20, h2, w1p + w13, d, 0.f, dxe, d);
      mm(false, false, n, d, h, dab_out + o20 + h, h2, w3p + w13, d, 1.f, dxe, d);
    }
  });
}

void ExpertBank::forward(const float* x, const std::vector<int64_t>& offsets, float* y) {
  const int64_t rows = offsets[static_cast<size_t>(E)];
  if (bf16) {
    to_bf16(x, xb, static_cast<size_t>(rows) * d);
    yb.resize(static_cast<size_t>(rows) * d);
    forward_bf16(offsets, yb.data());
    from_bf16(yb.data(), y, static_cast<size_t>(rows) * d);
    return;
  }
  ab.resize({rows, 2 * h});
  act.resize({rows, h});
  if (packed()) {  // W1 over W3 in one pass: [a | b] row by row
    forward_pass(
        x, act.data(), offsets, y,
        [&](int e, int n, const float* in, float* out) { p13[static_cast<size_t>(e)].matmul(in, n, out, 2 * h); },
        [&](int e, int n, const float* in, float* out) { p2[static_cast<size_t>(e)].matmul(in, n, out, d); });
    return;
  }
  forward_pass(x, act.data(), offsets, y, dense_mul13(w1.data(), w3.data(), static_cast<size_t>(h) * d, h, d),
               dense_mul2(w2.data(), h, d));
}

void ExpertBank::pack(WeightFormat f) {
  p13.resize(static_cast<size_t>(E));
  p2.resize(static_cast<size_t>(E));
  const size_t we = static_cast<size_t>(h) * d;
  for (int e = 0; e < E; ++e) {
    pack_and_round({{w1.data() + e * we, h}, {w3.data() + e * we, h}}, d, f, p13[static_cast<size_t>(e)]);
    pack_and_round(w2.data() + e * we, d, h, f, p2[static_cast<size_t>(e)]);
  }
  bf16 = false;
}

size_t ExpertBank::packed_bytes_per_expert() const {
  return p2.empty() ? 0 : p13[0].bytes() + p2[0].bytes();
}

void ExpertBank::forward_bf16(const std::vector<int64_t>& offsets, bf16_t* y) {
  const int64_t rows = offsets[static_cast<size_t>(E)];
  ab.resize({rows, 2 * h});
  // [W1_e; W3_e] stacked per expert, then W2.
  const size_t hd = static_cast<size_t>(h) * d;
  w13b.resize(2 * w1.numel());
  parallel_for(static_cast<size_t>(2 * E), [&](size_t i) {
    const size_t e = i / 2;
    to_bf16((i % 2 ? w3 : w1).data() + e * hd, w13b.data() + (2 * e + i % 2) * hd, hd);
  }, 1);
  to_bf16(w2.data(), w2b, w2.numel());
  hb.resize(static_cast<size_t>(rows) * h);
  forward_pass(xb.data(), hb.data(), offsets, y, dense_mul13(w13b.data(), w13b.data() + hd, 2 * hd, h, d),
               dense_mul2(w2b.data(), h, d));
}

void ExpertBank::backward(const float* x, const float* dz, const std::vector<int64_t>& offsets, const float* gate,
                          float* dx, float* dgate) {
  if (bf16) {
    const size_t n = static_cast<size_t>(offsets[static_cast<size_t>(E)]) * d;
    to_bf16(dz, dyb, n);
    backward_bf16(offsets, gate, dgate);
    from_bf16(dxb.data(), dx, n);
    return;
  }
  const float* none = nullptr;  // no transposed copies in fp32
  backward_pass(x, dz, w1.data(), w3.data(), static_cast<size_t>(h) * d, w2.data(), none, none, act.data(), ab.data(),
                act.data(), offsets, gate, dx, dgate);
}

void ExpertBank::backward_bf16(const std::vector<int64_t>& offsets, const float* gate, float* dgate) {
  const size_t rows = static_cast<size_t>(offsets[static_cast<size_t>(E)]), hd = static_cast<size_t>(h) * d;
  dab.resize(rows * 2 * h);
  dxb.resize(rows * d);
  const bf16_t *w13t = nullptr, *w2t = nullptr;
  if (bf16_transpose_weights()) {
    w13tb.resize(w13b.size());
    w2tb.resize(w2b.size());
    for (int e = 0; e < E; ++e) {
      transpose_bf16(w13b.data() + 2 * hd * e, 2 * h, d, w13tb.data() + 2 * hd * e);
      transpose_bf16(w2b.data() + hd * e, d, h, w2tb.data() + hd * e);
    }
    w13t = w13tb.data();
    w2t = w2tb.data();
  }
  backward_pass(xb.data(), dyb.data(), w13b.data(), w13b.data() + hd, 2 * hd, w2b.data(), w13t, w2t, nullptr,
                dab.data(), hb.data(), offsets, gate, dxb.data(), dgate);
}

}  // namespace moe
