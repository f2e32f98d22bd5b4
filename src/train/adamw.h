// adamw.h — AdamW (Loshchilov & Hutter 2019) over a model's parameter list, with decoupled weight
// decay applied only to matrices (no decay on norms, biases or other 1-D parameters), global-norm
// gradient clipping, and freeze masks by rows (a frozen row gets no update and no weight decay, and its
// optimizer moments are kept as they are).
//
// Tables trained by rows (SparseParam: PEER's experts and sub-keys) get lazy Adam, as PyTorch's
// SparseAdam: only the rows in the step's gradient update their moments and values, with the global
// step's bias correction; untouched rows keep their moments. The work is per row touched. No weight
// decay on these tables (a decay only on touched rows would shrink rows by how often they are chosen).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/comm.h"
#include "core/tensor.h"

namespace moe {

// A FreezeMask (core/tensor.h) as written in checkpoints: {"name": [[begin, end], ...]}.
nlohmann::json freeze_to_json(const FreezeMask& m);
// Throws moe::Error naming `where` and the entry when j is not such an object.
FreezeMask freeze_from_json(const nlohmann::json& j, const std::string& where);
// The parameters (elements) the mask freezes, given the model's parameters; a name or range that does
// not fit them is an error naming it.
int64_t frozen_param_count(const FreezeMask& m, const std::vector<Param>& params);

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0.1f;
};

class AdamW {
 public:
  AdamW(std::vector<Param> params, const AdamWConfig& c, std::vector<SparseParam> sparse = {});
  // One update with learning rate lr from the gradients currently in the parameters, each multiplied
  // by grad_scale (clip_scale's factor: clipping without a pass of its own over the gradients).
  void step(float lr, float grad_scale = 1.f);
  int64_t steps() const { return t_; }
  // Freezes the mask's rows (replacing any earlier mask); an unknown name or a range outside its
  // parameter is an error naming it.
  void set_freeze(const FreezeMask& m);
  // Zeroes the gradients of frozen rows (before clipping, so that the gradient norm is the trainable
  // parameters' alone).
  void mask_frozen_grads();
  // Optimizer state by parameter name ("<name>.exp_avg", "<name>.exp_avg_sq") for checkpoints.
  std::vector<std::pair<std::string, Tensor*>> state();
  void set_steps(int64_t t) { t_ = t; }

 private:
  AdamWConfig cfg_;
  std::vector<Param> params_;
  std::vector<SparseParam> sparse_;
  std::vector<Tensor> m_, v_;      // dense, then sparse parameters
  std::vector<std::vector<uint8_t>> frozen_;  // same order: per row along dim 0, 1 = frozen (empty: none)
  const std::string& name_of(size_t i) const;  // of the i-th in that order
  int64_t t_ = 0;
};

// Global L2 norm of all gradients, dense and sparse; when max_norm > 0 and the norm exceeds it, scales
// them down to it. Returns the norm before clipping. With several ranks (comm), the norm of the whole
// model: the sharded gradients' squares summed over the ranks, the others (equal on every rank after
// the gradient all-reduce) counted once.
double clip_grad_norm(const std::vector<Param>& params, double max_norm, const std::vector<SparseParam>& sparse = {},
                      Comm* comm = nullptr);
// clip_grad_norm's two halves: the norm (summed in fixed chunks: the same for any thread count), and the
// factor that brings it down to max_norm (1 when it is within, or max_norm is 0).
double grad_norm(const std::vector<Param>& params, const std::vector<SparseParam>& sparse = {}, Comm* comm = nullptr);
float clip_scale(double norm, double max_norm);
// Divides every gradient, dense and sparse, by n (the mean over gradient accumulation's micro-batches).
void divide_grads(const std::vector<Param>& params, const std::vector<SparseParam>& sparse, float n);

}  // namespace moe
