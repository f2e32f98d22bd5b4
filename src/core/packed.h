// packed.h — weight matrices packed for inference: fp32 as trained, bf16, or Q8_0 (llama.cpp's format:
// each row in blocks of 32 int8 values with one fp16 scale, 34 bytes per 32 weights, here stored 16
// blocks interleaved for the dot products), and the products of fp32 activations with them.
//
// Decoding reads every active weight once per token, so its speed is the memory bandwidth divided by
// the bytes of those weights: bf16 halves them, Q8_0 nearly quarters them. An fp32 or bf16 product
// keeps its activations and its accumulation in fp32 and widens each weight on the fly. A Q8_0 product
// first rounds each row of activations to Q8_0 blocks too (int8 with an fp32 scale per 32 values, as
// llama.cpp does for its Q8_0 matrices), so that each block's dot product is a sum of int8 products:
// eight VNNI instructions (vpdpbusd) per 16 blocks where the CPU has it. A few rows (decoding) run as dot
// products straight from the packed rows; more (a prompt's prefill, batched evaluation) unpack panels
// of rows to fp32 and multiply them with sgemm, Q8_0 with the rounded activations.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/enum_names.h"
#include "core/half.h"

namespace moe {

// How a model's weight matrices are stored for generation and evaluation (moe generate/eval --weights).
enum class WeightFormat { fp32, bf16, q8_0 };
template <>
struct EnumNames<WeightFormat> {
  static constexpr const char* what = "weight format";
  static constexpr std::array<const char*, 3> names = {"fp32", "bf16", "q8_0"};
};
// Bytes per weight: 4, 2 and 34/32.
double bytes_per_weight(WeightFormat f);

// A block of 32 activations rounded for a Q8_0 product: q = nearest-even(x·127 / max|x|) into q,
// returns the scale max|x| / 127 (0 for a block of zeros), in fp32: the weights' scales are fp16 as
// GGUF stores them, the activations' are not stored.
float quantize_activation_block(const float* x, int8_t* q);

class PackedMatrix {
 public:
  // Packs W (rows, cols), row-major. Q8_0 needs cols to be a multiple of 32 (moe::Error otherwise).
  // fp32 copies nothing: it reads W itself, which must stay in place and unchanged while it is used.
  void pack(const float* W, int rows, int cols, WeightFormat f);
  // Matrices stacked in this order (each (rows_i, cols)) as one: W1 over W3, W_q over W_k over W_v.
  void pack(const std::vector<std::pair<const float*, int>>& stacked, int cols, WeightFormat f);
  bool empty() const { return rows_ == 0; }
  WeightFormat format() const { return fmt_; }
  int rows() const { return rows_; }
  int cols() const { return cols_; }
  size_t bytes() const;  // what a product reads of it
  // Rows [r0, r0 + n) as the fp32 values a product multiplies by, into out (n, cols).
  void unpack(int r0, int n, float* out) const;
  // y (M, rows) = x (M, cols)·Wᵀ, or y += that when accumulate; ldy is y's row stride; Q8_0 multiplies
  // x's rows rounded by quantize_activation_block. Every element of y is computed by one thread in a
  // fixed order: the result does not depend on the thread count.
  void matmul(const float* x, int M, float* y, int ldy, bool accumulate = false) const;
  // The same for a matrix of stacked ones (W1 over W3, W_q over W_k over W_v), the columns of the
  // product going to one output per part: part i gets `rows` columns into y (row stride ldy). One pass
  // (one parallel region) instead of one per matrix; the parts' rows add up to rows().
  struct Part {
    int rows;
    float* y;
    int ldy;
  };
  void matmul(const float* x, int M, std::initializer_list<Part> parts, bool accumulate = false) const;

 private:
  WeightFormat fmt_ = WeightFormat::fp32;
  int rows_ = 0, cols_ = 0;
  std::vector<std::pair<const float*, int>> f32_;  // fp32: the stacked matrices read in place, and their rows
  bf16_vector b16_;             // bf16: (rows, cols)
  std::vector<uint8_t> q_;      // q8_0: quantized values + 128 (the unsigned operand of vpdpbusd), in groups of 16 blocks (packed.cpp)
  std::vector<uint16_t> qd_;    // q8_0: the blocks' fp16 scales, row after row, padded to whole groups
  struct Q8Rows;                // x's rows rounded for a Q8_0 product
  // fp32 and bf16: row r of W against the R ≤ 8 rows of x (row stride cols): out[m] = W_r · x_m.
  template <int R>
  void dots(int r, const float* x, float* out) const;
  // Q8_0: rows [r0, r1) of W (r0 a multiple of 16, at most 16 rows) against the M ≤ 8 rows of xq:
  // sums[m·16 + i] = W_{r0+i} · x_m (see packed.cpp).
  void q8_chunk(int r0, int r1, const Q8Rows& xq, int M, float* sums) const;
  const float* f32_row(int r) const;
};

// Packs W (rows, cols) into p and writes back into W the values the packed copy holds, so that
// whatever still reads W (a tied head's embedding rows) reads the packed model. (fp32 reads W in
// place: nothing to write.)
void pack_and_round(float* W, int rows, int cols, WeightFormat f, PackedMatrix& p);
// The same for matrices stacked in that order (each (rows_i, cols)) into one packed matrix.
void pack_and_round(const std::vector<std::pair<float*, int>>& stacked, int cols, WeightFormat f, PackedMatrix& p);

}  // namespace moe
