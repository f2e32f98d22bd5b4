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

// What generation and the tools need of a tokenizer, whichever it is: text to ids and back.
class TextTokenizer {
 public:
  virtual ~TextTokenizer() = default;
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual std::string token_text(int32_t id) const = 0;  // what one token stands for when streamed
  virtual std::string piece(int32_t id) const = 0;       // its string in the vocabulary
  virtual int vocab_size() const = 0;
  virtual int32_t id_of(const std::string& piece) const = 0;  // the id of a piece, or -1
};

// The tokenizer of a run folder: its sentencepiece tokenizer.model, else the byte-level BPE of an
// imported hf/tokenizer.json (data/bpe_tokenizer.h); null when it has neither.
std::unique_ptr<TextTokenizer> open_run_tokenizer(const std::string& dir);

class Tokenizer : public TextTokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  // Trains a BPE model with byte fallback on `text`, written to model_path.
  static void train(const std::string& text, int vocab_size, const std::string& model_path);
  void load(const std::string& model_path);  // throws moe::Error
  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string piece(int32_t id) const override;
  // The text one token stands for when streamed: "▁" as a space, byte pieces as their byte.
  std::string token_text(int32_t id) const override;
  int vocab_size() const override;
  int32_t id_of(const std::string& piece) const override;
  // What a piece is, and its score (the log-probability sentencepiece gives it): for writing the
  // vocabulary into other formats (GGUF).
  enum class PieceKind { normal, unknown, control, byte, unused };
  PieceKind kind(int32_t id) const;
  float score(int32_t id) const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace moe
