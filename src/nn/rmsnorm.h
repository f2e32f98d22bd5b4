// rmsnorm.h — RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x²) + eps) ⊙ w, row by row.
#pragma once
#include "core/tensor.h"

namespace moe {

struct RMSNorm {
  int d = 0;
  float eps = 1e-5f;
  Tensor w, dw;  // (d) weight, initialised to 1
  Tensor rstd;   // (T) 1/sqrt(mean(x²) + eps) of the last forward

  RMSNorm() = default;
  RMSNorm(int dim, float epsilon);
  void forward(const float* x, int T, float* y);  // x must stay valid until backward
  void backward(const float* dy, float* dx);       // dx overwritten; dw accumulates

 private:
  const float* x_ = nullptr;
  int T_ = 0;
};

}  // namespace moe
