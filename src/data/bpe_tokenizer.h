// bpe_tokenizer.h — the byte-level BPE of a Hugging Face tokenizer.json (GPT-2's scheme, used by Qwen,
// OLMoE and GraniteMoE checkpoints), read from the file and run as the `tokenizers` library does:
//   1. the text is split at the added tokens (special ones included), which map to their ids;
//   2. every other segment is normalised (NFC when the file says so, by utf8proc);
//   3. pre-tokenised by the file's regex (a Split with "Isolated" behaviour, or ByteLevel's own GPT-2
//      regex), run by PCRE2 with Unicode properties;
//   4. each piece's bytes are mapped to GPT-2's printable characters and merged by the ranks of
//      "merges" (the lowest-ranked adjacent pair first, every occurrence, until none is left);
//   5. the symbols are looked up in "vocab".
// Decoding maps the characters back to bytes. Checked against the `tokenizers` package
// (tests/interop/tokenizer_parity.py).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "data/tokenizer.h"

namespace moe {

class BpeTokenizer : public TextTokenizer {
 public:
  BpeTokenizer();
  ~BpeTokenizer();
  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
  // Throws moe::Error naming the file and what it cannot read (a model other than BPE, a pre-tokenizer
  // other than Split/ByteLevel, a bad regex...).
  static BpeTokenizer load(const std::string& tokenizer_json);

  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string token_text(int32_t id) const override;  // the bytes one token stands for
  std::string piece(int32_t id) const override;       // its string in the vocabulary
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  // The id of a piece or added token (e.g. "<|im_end|>"), or -1.
  int32_t id_of(const std::string& piece) const override;
  // For writing the vocabulary into other formats (GGUF's "gpt2" tokenizer): the merges in rank order
  // ("a b"), whether an id is an added token and whether it is special, and the pre-tokenizer regex.
  std::vector<std::string> merges() const;
  bool is_added(int32_t id) const { return id >= 0 && static_cast<size_t>(id) < is_added_.size() && is_added_[static_cast<size_t>(id)]; }
  bool is_special(int32_t id) const { return id >= 0 && static_cast<size_t>(id) < is_special_.size() && is_special_[static_cast<size_t>(id)]; }
  const std::string& pattern() const { return pattern_; }
  static const char* gpt2_pattern();

 private:
  struct Regex;
  std::unique_ptr<Regex> regex_;
  bool nfc_ = false, add_prefix_space_ = false;
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> pieces_;                  // id → piece (vocab and added tokens)
  std::unordered_map<std::string, int> merge_rank_;  // "a b" → rank
  std::vector<std::pair<std::string, int32_t>> added_;  // added tokens, longest first
  std::vector<bool> is_added_, is_special_;
  std::string pattern_;
  std::string byte_char_[256];                       // byte → its GPT-2 character (UTF-8)
  std::map<std::string, unsigned char> char_byte_;   // and back
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;

  void encode_piece(const std::string& bytes, std::vector<int32_t>& out) const;
};

}  // namespace moe
