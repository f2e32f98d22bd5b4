#include "nn/embedding.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/parallel.h"
#include "core/rng.h"

namespace moe {

Embedding::Embedding(int vocab_size, int dim, uint64_t seed, uint64_t stream, float init_std)
    : vocab(vocab_size), d(dim), w({vocab_size, dim}), dw({vocab_size, dim}) {
  init_normal(w.data(), w.numel(), seed, stream, 0.f, init_std);
}

void Embedding::forward(const int32_t* tokens, int T, float* y) const {
  for (int t = 0; t < T; ++t)
    if (tokens[t] < 0 || tokens[t] >= vocab)
      fail("embedding: token id " + std::to_string(tokens[t]) + " at position " + std::to_string(t) +
           " is outside the vocabulary of " + std::to_string(vocab) + "; the tokenizer and the model disagree");
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    std::memcpy(y + t * d, w.data() + static_cast<size_t>(tokens[t]) * d, sizeof(float) * d);
  }, 256);
}

void Embedding::backward(const int32_t* tokens, int T, const float* dy) {
  // Columns split over threads; tokens summed in order within each column block.
  const int blocks = (d + 63) / 64;
  parallel_for(static_cast<size_t>(blocks), [&](size_t bi) {
    const int j0 = static_cast<int>(bi) * 64, j1 = std::min(d, j0 + 64);
    for (int t = 0; t < T; ++t) {
      float* row = dw.data() + static_cast<size_t>(tokens[t]) * d;
      const float* g = dy + static_cast<size_t>(t) * d;
      for (int j = j0; j < j1; ++j) row[j] += g[j];
    }
  }, 2);
}

}  // namespace moe
