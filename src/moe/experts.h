// experts.h — E SwiGLU experts stored stacked, run as a grouped GEMM over an expert-contiguous buffer.
//   e(x) = W2 · (silu(W1·x) ⊙ W3·x),  W1, W3: (h, d),  W2: (d, h)
// Rows [offsets[e], offsets[e+1]) of the input buffer belong to expert e (see dispatch.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/packed.h"
#include "core/tensor.h"

namespace moe {

struct ExpertBank {
  int E = 0, d = 0, h = 0;
  // Expert parallelism: this bank holds experts [first, first + E) of a layer of `total` (0: all).
  int first = 0, total = 0;
  Tensor w1, w3;     // (E, h, d)  gate_proj, up_proj
  Tensor w2;         // (E, d, h)  down_proj
  Tensor dw1, dw3, dw2;
  Tensor ab;   // (rows, 2h)  per row [a | b] = [x·W1ᵀ | x·W3ᵀ] of the last forward; [dA | dB] in backward (fp32)
  Tensor act;  // (rows, h)   silu(a) ⊙ b of the last forward (fp32 mode)
  Tensor dh;   // (rows, h)   backward scratch: dy·W2 before gating

  // Mixed precision: GEMM inputs in bf16, accumulation and weights and gradients in fp32. W1 and W3
  // are copied to bf16 stacked per expert, [W1_e; W3_e] (2h, d), so that a and b come from one GEMM
  // and dX = [dA dB]·[W1_e; W3_e] from one GEMM with one rounding: the experts' dX (rows, d), the
  // largest buffer of the backward, is written and read in bf16, as PyTorch's autocast does.
  bool bf16 = false;
  bf16_vector xb, hb;     // (rows, d), (rows, h): x and silu(a) ⊙ b in bf16
  bf16_vector w13b, w2b;  // (E, 2h, d) [W1_e; W3_e] and (E, d, h) W2 in bf16, made at each forward
  bf16_vector w13tb, w2tb;  // (E, d, 2h) and (E, h, d): their transposes, made by backward_bf16 when
                            // bf16_transpose_weights() (dX and dH then run as A·Bᵀ)
  bf16_vector dyb, dab;   // (rows, d), (rows, 2h): backward GEMM inputs dz and [dA | dB]
  bf16_vector yb;         // (rows, d) output of forward() in bf16 mode, before widening
  bf16_vector dxb;        // (rows, d) dX of backward_bf16

  ExpertBank() = default;
  // The experts [first, first + n_experts) of a bank of `total` (0: n_experts) drawn whole from
  // (seed, stream): a rank's share is the same numbers one process holding every expert has.
  ExpertBank(int n_experts, int d_model, int hidden, uint64_t seed, uint64_t stream, float init_std, int first_expert = 0,
             int total_experts = 0);

  // y (rows, d) = expert(x) row by row, ungated. x must stay valid until backward.
  void forward(const float* x, const std::vector<int64_t>& offsets, float* y);
  // Backward of z_r = g_r·y_r for every row r, given dz (rows, d) and the gates g (rows; null: all 1).
  // Accumulates dw1, dw3, dw2, writes dx (rows, d) and, when g is given, dg (rows) = dz_r·y_r,
  // computed as h_r·(dz_r·W2) inside the expert pass (Y itself is never read back). Overwrites a, b, act.
  void backward(const float* x, const float* dz, const std::vector<int64_t>& offsets, const float* gate,
                float* dx, float* dgate);

  // bf16 mode with the inputs already rounded by the caller: forward_bf16 reads x from xb (resized by
  // the caller to (rows, d)) and writes y in bf16; backward_bf16 reads dz from dyb and writes dX into
  // dxb. Saves passes over the (rows, d) buffers, which at fine granularity are the largest the layer
  // moves.
  void forward_bf16(const std::vector<int64_t>& offsets, bf16_t* y);
  void backward_bf16(const std::vector<int64_t>& offsets, const float* gate, float* dgate);
  void params(std::vector<Param>& out, const std::string& prefix);  // sharded when total > 0

  // Inference from packed weights (core/packed.h): each expert's W1, W3 and W2 packed in format f and
  // the fp32 weights rounded to what they hold; forward() then reads the packed copies with fp32
  // activations (bf16 mode off). Not for training: the packed copies do not follow the weights.
  void pack(WeightFormat f);
  bool packed() const { return !p2.empty(); }
  size_t packed_bytes_per_expert() const;  // W1, W3 and W2 of one expert as packed

 private:
  // Few large experts: each GEMM runs on all threads. Many: one expert per thread, BLAS serial.
  bool parallel_over_experts(const std::vector<int64_t>& offsets) const;
  std::vector<PackedMatrix> p13, p2;  // per expert, when packed: W1 over W3, and W2
  // The grouped SwiGLU; mul13(e, n, in, out) writes the n rows [a | b] of expert e into out (row
  // stride 2h), mul2(e, n, in, out) the n rows of in·W2ᵀ.
  template <class In, class Out, class Mul13, class Mul2>
  void forward_pass(const In* x, In* hbuf, const std::vector<int64_t>& offsets, Out* y, Mul13&& mul13, Mul2&& mul2);
  template <class In, class Out>
  void backward_pass(const In* x, const In* dz, const In* w1p, const In* w3p, size_t w13_stride, const In* w2p,
                     const In* w13t, const In* w2t, const float* h_fp32, In* dab_out, In* gh_out,
                     const std::vector<int64_t>& offsets, const float* gate, Out* dx, float* dgate);
};

}  // namespace moe
