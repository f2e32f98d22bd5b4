// tokenizer.h — a sentencepiece BPE tokenizer with byte fallback and identity normalisation, so that
// whitespace and any byte round-trip.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moe {

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
  // What a piece is, and its score (the log-probability sentencepiece gives it): for writing the
  // vocabulary into other formats (GGUF).
  enum class PieceKind { normal, unknown, control, byte, unused };
  PieceKind kind(int32_t id) const;
  float score(int32_t id) const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace moe
