// adamw.h — AdamW (Loshchilov & Hutter 2019) over a model's parameter list, with decoupled weight
// decay applied only to matrices (no decay on norms, biases or other 1-D parameters), global-norm
// gradient clipping, and per-parameter freeze masks (a frozen parameter keeps its optimizer state).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moe {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0.1f;
};

class AdamW {
 public:
  AdamW(std::vector<Param> params, const AdamWConfig& c);
  // One update with learning rate lr from the gradients currently in the parameters.
  void step(float lr);
  int64_t steps() const { return t_; }
  void set_frozen(const std::string& name, bool frozen);
  // Optimizer state by parameter name ("<name>.exp_avg", "<name>.exp_avg_sq") for checkpoints.
  std::vector<std::pair<std::string, Tensor*>> state();
  void set_steps(int64_t t) { t_ = t; }

 private:
  AdamWConfig cfg_;
  std::vector<Param> params_;
  std::vector<Tensor> m_, v_;
  std::vector<uint8_t> frozen_;
  int64_t t_ = 0;
};

// Global L2 norm of all gradients; when max_norm > 0 and the norm exceeds it, scales them down to it.
// Returns the norm before clipping.
double clip_grad_norm(const std::vector<Param>& params, double max_norm);

}  // namespace moe
