// ffn.h — the feed-forward sublayer of a transformer block, as the model, the trainer and the reports
// see it. The dense SwiGLU (model/dense_ffn.h), the MoE layer (moe/moe_layer.h) and PEER
// (peer/peer_layer.h) implement it, so nothing above src/model/ needs to know which one a block holds:
//
//   forward / backward           y = FFN(x), and the gradients (explicit, no autograd)
//   parameters, buffers           named for the optimizer and the checkpoints (Hugging Face-style names)
//   accounting                    total and active parameters, training FLOPs per token
//   loss terms, reward            balance losses of the last forward; a per-token reward for routers
//                                 trained by REINFORCE
//   after_step                    state moved once per optimizer step (DeepSeek-V3's bias, RL-R's baseline)
//   experts_of, new_stats         which experts a token used; metrics accumulated over forwards
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/comm.h"
#include "core/packed.h"
#include "core/tensor.h"

namespace moe {

// What a forward may use besides its input.
struct FfnContext {
  bool training = true;             // noise, sampling, balanced assignment, BatchNorm's batch statistics
  uint64_t step = 0;                // keys the random streams of this forward (noise, jitter, sampling)
  int seq_len = 0;                  // tokens per sequence, for sequence-wise losses (0: one sequence of T)
  const int32_t* tokens = nullptr;  // (T) token ids (the hash router routes by them)
  bool causal = false;              // decoding: a token's output may not depend on later tokens
  // Index of the first of these tokens in the whole batch of every rank (data parallelism): random
  // draws per token (noise, jitter) take their numbers at that place of their stream, as one process
  // running the whole batch would.
  int64_t token0 = 0;
  // Every rank of a distributed FFN runs these same tokens (inference): the batch is this rank's alone
  // (capacity, balance losses), though the experts still run on their own ranks.
  bool replicated = false;
};

// The metrics of one FFN accumulated over any number of its forwards (one for a training step's
// metrics line, the validation windows for `moe inspect --routing`).
class FfnStats {
 public:
  virtual ~FfnStats() = default;
  virtual void add() = 0;  // the FFN's last forward
  // The key of the kind's metrics in metrics.jsonl ("moe", "peer"): each step's line holds, per kind,
  // a list with one to_json() per layer.
  virtual const char* group() const = 0;
  virtual nlohmann::json to_json() const = 0;                  // the metrics line's numbers
  virtual nlohmann::json report() const { return to_json(); }  // inspect --routing --json: those and more
  // Data parallelism: turns this rank's sums into those of the whole batch of every rank (collective).
  virtual void reduce(Comm& /*comm*/) {}
  virtual std::string summary() const = 0;   // a few words for the end of training, e.g. "max/mean 1.31 cv 0.12"
  virtual std::string describe() const = 0;  // inspect --routing: lines that follow "layer N: "
};

using NamedTensor = std::pair<std::string, Tensor*>;

class Ffn {
 public:
  virtual ~Ffn() = default;

  // y (T, d) = FFN(x (T, d)); x must stay valid until backward.
  virtual void forward(const float* x, int T, float* y, const FfnContext& ctx) = 0;
  // dy (T, d) → dx (T, d) (overwritten); parameter gradients accumulate (zero_grad clears them). The
  // objective is Σ y·dy + loss(): the loss terms enter it with weight 1.
  virtual void backward(const float* dy, float* dx) = 0;

  // Appends the trained parameters, named prefix + their own name (e.g. "model.layers.3.mlp." +
  // "experts.w1"), in a fixed order.
  virtual void collect_params(std::vector<Param>& out, const std::string& prefix) = 0;
  // Tables trained by rows (PEER's experts and sub-keys).
  virtual void collect_sparse_params(std::vector<SparseParam>& /*out*/, const std::string& /*prefix*/) {}
  // Saved state that is not trained by gradient (router biases and baselines, BatchNorm statistics).
  virtual void collect_buffers(std::vector<NamedTensor>& /*out*/, const std::string& /*prefix*/) {}

  virtual int64_t num_params() const = 0;         // every parameter
  virtual int64_t num_active_params() const = 0;  // those one token uses
  // Training FLOPs per token, forward + backward (docs/MECHANISMS.md §7): 6 per active weight,
  // 14 per router weight (routing cost), PEER's retrieval as PeerLayer counts it.
  virtual double flops_per_token() const = 0;

  // The loss terms of the last forward (balance losses, …), each already multiplied by its coefficient.
  virtual float loss() const { return 0.f; }
  // Routers trained by reward (RL-R) want the per-token reward −CE (NaN where a token has none)
  // between forward and backward; loss() then includes the REINFORCE surrogate.
  virtual bool wants_reward() const { return false; }
  virtual void set_reward(const float* /*reward*/) {}
  // Called after each optimizer step: state that moves once per step (DeepSeek-V3's selection bias
  // from the loads routed since the last call; RL-R's reward baseline).
  virtual void after_step() {}

  // The experts token t of the last forward went to; nullopt for an FFN without experts.
  virtual std::optional<std::vector<int32_t>> experts_of(int /*t*/) const { return std::nullopt; }
  // A new accumulator of this FFN's metrics, or null when it has none (the dense FFN).
  virtual std::unique_ptr<FfnStats> new_stats() const { return nullptr; }

  // Expert and data parallelism over the ranks of comm (docs/DISTRIBUTED.md): each rank keeps its share
  // of the experts (sharded parameters) and the forward and backward exchange tokens with the others;
  // what is not sharded stays whole on every rank (the trainer sums its gradients). Called once, right
  // after construction, by every rank. The dense FFN has nothing to do; an FFN that cannot be
  // distributed throws moe::Error naming the setting.
  virtual void distribute(Comm* /*comm*/) {}

  // Inference from packed weights (core/packed.h): the FFN's weight matrices packed in format f and its
  // fp32 weights rounded to what they hold. An FFN with nothing to pack (PEER's tables) stays fp32.
  virtual void pack_weights(WeightFormat /*f*/) {}
  // Of num_active_params, those read from packed copies, and their bytes (0, 0 when not packed).
  virtual int64_t packed_active_params() const { return 0; }
  virtual double packed_active_bytes() const { return 0.0; }

  // The lists above, without a prefix; zero_grad clears every gradient, dense and sparse.
  std::vector<Param> params();
  std::vector<SparseParam> sparse_params();
  void zero_grad();
};

}  // namespace moe
