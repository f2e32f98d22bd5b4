// adamw.h — AdamW (Loshchilov & Hutter 2019) over a model's parameter list, with decoupled weight
// decay applied only to matrices (no decay on norms, biases or other 1-D parameters), global-norm
// gradient clipping, and per-parameter freeze masks (a frozen parameter keeps its optimizer state).
//
// Tables trained by rows (SparseParam: PEER's experts and sub-keys) get lazy Adam, as PyTorch's
// SparseAdam: only the rows in the step's gradient update their moments and values, with the global
// step's bias correction; untouched rows keep their moments. The work is per row touched. No weight
// decay on these tables (a decay only on touched rows would shrink rows by how often they are chosen).
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
  AdamW(std::vector<Param> params, const AdamWConfig& c, std::vector<SparseParam> sparse = {});
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
  std::vector<SparseParam> sparse_;
  std::vector<Tensor> m_, v_;      // dense, then sparse parameters
  std::vector<uint8_t> frozen_;    // same order
  const std::string& name_of(size_t i) const;  // of the i-th in that order
  int64_t t_ = 0;
};

// Global L2 norm of all gradients, dense and sparse; when max_norm > 0 and the norm exceeds it, scales
// them down to it. Returns the norm before clipping.
double clip_grad_norm(const std::vector<Param>& params, double max_norm, const std::vector<SparseParam>& sparse = {});
// Divides every gradient, dense and sparse, by n (the mean over gradient accumulation's micro-batches).
void divide_grads(const std::vector<Param>& params, const std::vector<SparseParam>& sparse, float n);

}  // namespace moe
