// embedding.h — token embedding: y_t = W[token_t].
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace moe {

struct Embedding {
  int vocab = 0, d = 0;
  Tensor w, dw;  // (vocab, d)

  Embedding() = default;
  Embedding(int vocab_size, int dim, uint64_t seed, uint64_t stream, float init_std);
  // Throws moe::Error when a token id is outside [0, vocab).
  void forward(const int32_t* tokens, int T, float* y) const;
  // dw[token_t] += dy_t, in token order (deterministic).
  void backward(const int32_t* tokens, int T, const float* dy);
};

}  // namespace moe
