// data.h — the three corpora of docs/MECHANISMS.md §10, read from their Debian packages, a sentencepiece BPE
// tokenizer (byte fallback), and token shards read by memory mapping.
//
//   kjv        King James Bible (package bible-kjv, `bible -f Gen1:1-Rev22:21`), the default
//   fortunes   the fortune cookie files (package fortunes, /usr/share/games/fortunes)
//   c-headers  the C headers under /usr/include (libc6-dev and whatever else is installed)
//   file:PATH  any text file
//
// `moe data` writes, per corpus, into DIR/<corpus>/: train.txt, val.txt (a deterministic held-out
// split: every 20th block of 32 lines), tokenizer.model, train.bin and val.bin (little-endian uint16
// token ids) and meta.json.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moe {

const std::vector<std::string>& corpus_names();
// The corpus text; throws moe::Error naming the Debian package to install when it is missing.
std::string corpus_text(const std::string& name);
// Split text into (train, val) by blocks of lines, deterministically.
std::pair<std::string, std::string> split_train_val(const std::string& text);

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  // Trains a BPE model with byte fallback on `text`, written to model_path.
  static void train(const std::string& text, int vocab_size, const std::string& model_path);
  void load(const std::string& model_path);  // throws moe::Error
  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string piece(int32_t id) const;
  // The text one token stands for when streamed: "▁" as a space, byte pieces as their byte.
  std::string token_text(int32_t id) const;
  int vocab_size() const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

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

// Prepares DIR/<corpus>/ as described above; prints progress lines. Returns the folder.
std::string prepare_corpus(const std::string& name, const std::string& dir, int vocab_size, bool force);

// Batches of B windows of L+1 tokens: inputs and next-token targets, (B·L) each. Training windows
// start at offsets drawn from the counter-based RNG keyed by (seed, step): deterministic and
// resumable. Evaluation windows tile the shard in order.
void sample_batch(const TokenShard& shard, int B, int L, uint64_t seed, uint64_t step, int32_t* tokens, int32_t* targets);
// Number of evaluation windows of L+1 tokens in the shard (capped at max_windows), and the i-th.
size_t eval_windows(const TokenShard& shard, int L, size_t max_windows);
void eval_window(const TokenShard& shard, int L, size_t i, int32_t* tokens, int32_t* targets);

}  // namespace moe
