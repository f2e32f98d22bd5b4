#include "nn/attention_core.h"

#include <algorithm>
#include <vector>

#include "core/small_gemm.h"
#include "core/vmath.h"

namespace moe {

double causal_pairs(int L) {
  double pairs = 0.0;
  for (int r0 = 0; r0 < L; r0 += kCausalBlock) {
    const int r1 = std::min(L, r0 + kCausalBlock);
    pairs += static_cast<double>(r1 - r0) * r1;
  }
  return pairs;
}

namespace {

// The calling thread's scratch for N keys: k (and, backward, v) transposed to (hd, N), so that the
// scores' products read a row of keys per step of the head dimension, and a block's (kCausalBlock, N)
// probabilities (and, backward, their gradients).
struct Scratch {
  std::vector<float> kt, vt, p, dp;
};
Scratch& scratch(int N, int hd, bool backward) {
  thread_local Scratch s;
  s.kt.resize(static_cast<size_t>(hd) * N);
  s.p.resize(static_cast<size_t>(kCausalBlock) * N);
  if (backward) {
    s.vt.resize(static_cast<size_t>(hd) * N);
    s.dp.resize(static_cast<size_t>(kCausalBlock) * N);
  }
  return s;
}

// The scaled scores of query rows [r0, r1) against the first `keys` keys into p; kt and p have row
// stride N.
void scores(int N, int hd, float scale, const float* q, std::ptrdiff_t ldq, const float* kt, int r0, int r1, int keys, float* p) {
  small_gemm(r1 - r0, keys, hd, scale, q + r0 * ldq, ldq, 1, kt, N, p, N, false);
}

}  // namespace

void causal_attention_forward(int m, int past, int hd, float scale, const float* q, std::ptrdiff_t ldq, const float* k,
                              const float* v, std::ptrdiff_t ldkv, float* o, float* lse) {
  const int N = past + m;  // keys
  Scratch& s = scratch(N, hd, false);
  transpose_block(k, ldkv, N, hd, s.kt.data(), N);
  for (int r0 = 0; r0 < m; r0 += kCausalBlock) {
    const int r1 = std::min(m, r0 + kCausalBlock), n = r1 - r0, keys = past + r1;
    scores(N, hd, scale, q, ldq, s.kt.data(), r0, r1, keys, s.p.data());
    for (int i = r0; i < r1; ++i) {  // query row i sits at position past + i
      float* row = s.p.data() + static_cast<std::ptrdiff_t>(i - r0) * N;
      softmax(row, row, past + i + 1, lse ? lse + i : nullptr);
      std::fill(row + past + i + 1, row + keys, 0.f);
    }
    small_gemm(n, hd, keys, 1.f, s.p.data(), N, 1, v, ldkv, o + r0 * ldq, ldq, false);
  }
}

void causal_attention_backward(int L, int hd, float scale, const float* q, std::ptrdiff_t ldq, const float* k,
                               const float* v, std::ptrdiff_t ldkv, const float* lse, const float* dout, float* dq,
                               float* dk, float* dv) {
  Scratch& s = scratch(L, hd, true);
  transpose_block(k, ldkv, L, hd, s.kt.data(), L);
  transpose_block(v, ldkv, L, hd, s.vt.data(), L);
  float* P = s.p.data();
  float* dS = s.dp.data();
  for (int r0 = 0; r0 < L; r0 += kCausalBlock) {
    const int r1 = std::min(L, r0 + kCausalBlock), n = r1 - r0;
    // P of the block again: exp(scaled score − the row's normaliser), zero above the diagonal.
    scores(L, hd, scale, q, ldq, s.kt.data(), r0, r1, r1, P);
    for (int i = r0; i < r1; ++i) {
      float* row = P + static_cast<std::ptrdiff_t>(i - r0) * L;
      const float z = lse[i];
      exp_minus(row, z, row, i + 1);
      std::fill(row + i + 1, row + r1, 0.f);
    }
    // dP = do·vᵀ, then dS in its place; zero above the diagonal, where the products below read it.
    small_gemm(n, r1, hd, 1.f, dout + r0 * ldq, ldq, 1, s.vt.data(), L, dS, L, false);
    for (int i = r0; i < r1; ++i) {
      const std::ptrdiff_t at = static_cast<std::ptrdiff_t>(i - r0) * L;
      softmax_backward(P + at, dS + at, dS + at, i + 1);
      std::fill(dS + at + i + 1, dS + at + r1, 0.f);
    }
    small_gemm(n, hd, r1, scale, dS, L, 1, k, ldkv, dq + r0 * ldq, ldq, false);               // dq = scale·dS·k
    small_gemm(r1, hd, n, 1.f, P, 1, L, dout + r0 * ldq, ldq, dv, ldkv, true);                 // dv += Pᵀ·do
    small_gemm(r1, hd, n, scale, dS, 1, L, q + r0 * ldq, ldq, dk, ldkv, true);                 // dk += scale·dSᵀ·q
  }
}

}  // namespace moe
