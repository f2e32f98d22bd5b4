// shard.h — token shards: little-endian uint16 token ids in a file, read by memory mapping, and the
// training and evaluation windows drawn from them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// A read-only memory-mapped file of uint16 token ids.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);  // throws moe::Error naming the file and the fix
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  size_t size() const { return n_; }
  uint16_t operator[](size_t i) const { return data_[i]; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint16_t* data_ = nullptr;
  size_t n_ = 0;
};

void write_token_shard(const std::string& path, const std::vector<int32_t>& ids);

// Batches of B windows of L+1 tokens: inputs and next-token targets, (B·L) each. Training windows
// start at offsets drawn from the counter-based RNG keyed by (seed, step): deterministic and
// resumable; `first` draws windows [first, first + B) of the step's batch (a rank's share of a batch
// of up to 4096 windows: window b of a step has the stream index step·4096 + b). Evaluation windows
// tile the shard in order.
void sample_batch(const TokenShard& shard, int B, int L, uint64_t seed, uint64_t step, int32_t* tokens, int32_t* targets,
                  int first = 0);
// Number of evaluation windows of L+1 tokens in the shard (capped at max_windows), and the i-th.
size_t eval_windows(const TokenShard& shard, int L, size_t max_windows);
void eval_window(const TokenShard& shard, int L, size_t i, int32_t* tokens, int32_t* targets);

}  // namespace moe
