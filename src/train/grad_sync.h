// grad_sync.h — data parallelism's gradient sum (docs/DISTRIBUTED.md): after a step's backward, every
// gradient that is not sharded (all but the experts') holds its sum over the ranks, so each rank
// holds the gradient of the whole batch and the replicated parameters stay equal.
//
// Gradients travel in buckets of about bucket_bytes: small tensors packed together, large ones in
// place, one MPI_Iallreduce each. With overlap, a block's buckets start as soon as the backward has
// finished the block (TransformerLM::backward's block_done), and move on while the blocks below run
// their backward (MPI progresses them inside the MoE layers' all-to-alls and at each block's end);
// the embedding, final norm and head start last. finish() starts what is left and waits.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/comm.h"
#include "model/transformer.h"

namespace moe {

class GradSync {
 public:
  GradSync(TransformerLM& model, Comm& comm, bool overlap, size_t bucket_bytes = size_t{4} << 20);
  // The callback for the backward of a step's last micro-batch (empty without overlap).
  std::function<void(size_t)> hook();
  // Starts every bucket not started, waits for all, unpacks. The gradients are then the sums.
  void finish();
  // Bytes and seconds of the last step's gradient sum (its starts, progress and wait).
  const CommStats& last() const { return last_; }

 private:
  struct Bucket {
    std::vector<Tensor*> grads;
    std::vector<float> packed;  // empty: one large tensor summed in place
    bool started = false;
  };
  Comm& comm_;
  bool overlap_;
  std::vector<std::vector<Bucket>> blocks_;  // per block
  std::vector<Bucket> rest_;                 // embedding, final norm, head
  CommStats last_;
  void start(Bucket& b);
  void block_done(size_t l);
};

}  // namespace moe
