#include "data/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"

namespace moe {

using json = nlohmann::json;

// GPT-2's pre-tokenizer regex, which ByteLevel applies when its use_regex is true.
static const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct BpeTokenizer::Regex {
  pcre2_code* code = nullptr;
  pcre2_match_data* match = nullptr;
  Regex(const std::string& pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE at = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err, &at,
                         nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail(where + ": the pre-tokenizer regex does not compile at offset " + std::to_string(at) + ": " +
           reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // faster when the JIT is there; correct without it
    match = pcre2_match_data_create_from_pattern(code, nullptr);
  }
  ~Regex() {
    pcre2_match_data_free(match);
    pcre2_code_free(code);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // The pieces of s: every match, and every stretch between matches ("Isolated" behaviour).
  std::vector<std::string> split(const std::string& s) const {
    std::vector<std::string> out;
    size_t at = 0, last = 0;
    while (at <= s.size()) {
      const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), at, 0, match, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match);
      const size_t b = ov[0], e = ov[1];
      if (b > last) out.push_back(s.substr(last, b - last));
      if (e > b) out.push_back(s.substr(b, e - b));
      last = e;
      if (e == b) {  // an empty match: step over one UTF-8 character
        at = e + 1;
        while (at < s.size() && (static_cast<unsigned char>(s[at]) & 0xc0) == 0x80) ++at;
      } else {
        at = e;
      }
    }
    if (last < s.size()) out.push_back(s.substr(last));
    return out;
  }
};

BpeTokenizer::BpeTokenizer() = default;
BpeTokenizer::~BpeTokenizer() = default;
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;

static std::string utf8_of(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xc0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    s += static_cast<char>(0xe0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return s;
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  const json j = json::parse(read_file(path, "give a Hugging Face tokenizer.json"), nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(path + " is not valid JSON; the file is damaged");
  const json& model = j.value("model", json::object());
  if (model.value("type", std::string("BPE")) != "BPE" || !model.contains("vocab") || !model["vocab"].is_object())
    fail(path + ": the model is " + model.value("type", std::string("?")) + "; only byte-level BPE tokenizers are read");
  BpeTokenizer t;
  // GPT-2's byte ↔ printable character table.
  std::vector<int> printable;
  for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
  for (int b = 0xa1; b <= 0xac; ++b) printable.push_back(b);
  for (int b = 0xae; b <= 0xff; ++b) printable.push_back(b);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool direct = std::find(printable.begin(), printable.end(), b) != printable.end();
    t.byte_char_[b] = utf8_of(direct ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++));
    t.char_byte_[t.byte_char_[b]] = static_cast<unsigned char>(b);
  }
  int32_t max_id = -1;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > INT32_MAX)
      fail(path + ": vocab entry '" + it.key() + "' has no valid id");
    t.vocab_[it.key()] = it->get<int32_t>();
    max_id = std::max(max_id, it->get<int32_t>());
  }
  const json added = j.value("added_tokens", json::array());
  std::vector<int32_t> special;
  for (const json& a : added) {
    if (!a.is_object() || !a.contains("id") || !a.contains("content")) fail(path + ": an added_tokens entry lacks id or content");
    t.added_.emplace_back(a["content"].get<std::string>(), a["id"].get<int32_t>());
    max_id = std::max(max_id, a["id"].get<int32_t>());
    if (a.value("special", false)) special.push_back(a["id"].get<int32_t>());
  }
  std::sort(t.added_.begin(), t.added_.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  t.pieces_.assign(static_cast<size_t>(max_id + 1), "");
  t.is_added_.assign(static_cast<size_t>(max_id + 1), false);
  t.is_special_.assign(static_cast<size_t>(max_id + 1), false);
  for (int32_t id : special) t.is_special_[static_cast<size_t>(id)] = true;
  for (const auto& [p, id] : t.vocab_) t.pieces_[static_cast<size_t>(id)] = p;
  for (const auto& [p, id] : t.added_) t.pieces_[static_cast<size_t>(id)] = p, t.is_added_[static_cast<size_t>(id)] = true;
  int rank = 0;
  for (const json& m : model.value("merges", json::array())) {
    std::string key;
    if (m.is_string()) key = m.get<std::string>();
    else if (m.is_array() && m.size() == 2) key = m[0].get<std::string>() + " " + m[1].get<std::string>();
    else fail(path + ": a merges entry is neither \"a b\" nor [\"a\", \"b\"]");
    t.merge_rank_.emplace(key, rank++);
  }
  // The normaliser: none, or NFC (alone or in a Sequence).
  const json& norm = j.value("normalizer", json());
  auto read_norm = [&](const json& n) {
    const std::string type = n.value("type", std::string());
    if (type == "NFC") t.nfc_ = true;
    else fail(path + ": normalizer " + type + " is not supported (none or NFC)");
  };
  if (norm.is_object()) {
    if (norm.value("type", std::string()) == "Sequence")
      for (const json& n : norm.value("normalizers", json::array())) read_norm(n);
    else
      read_norm(norm);
  }
  // The pre-tokenizer: ByteLevel (with or without its regex), optionally after a Split by regex.
  const json& pre = j.value("pre_tokenizer", json());
  std::vector<json> steps;
  if (pre.is_object() && pre.value("type", std::string()) == "Sequence") steps = pre.value("pretokenizers", std::vector<json>{});
  else if (pre.is_object()) steps = {pre};
  std::string pattern;
  bool byte_level = false;
  for (const json& s : steps) {
    const std::string type = s.value("type", std::string());
    if (type == "Split") {
      if (!s.contains("pattern") || !s["pattern"].contains("Regex") || s.value("behavior", std::string()) != "Isolated" ||
          s.value("invert", false))
        fail(path + ": only a Split by Regex with behavior Isolated is supported");
      pattern = s["pattern"]["Regex"].get<std::string>();
    } else if (type == "ByteLevel") {
      byte_level = true;
      t.add_prefix_space_ = s.value("add_prefix_space", false);
      if (s.value("use_regex", true)) {
        if (!pattern.empty()) fail(path + ": a Split and ByteLevel's own regex together are not supported");
        pattern = kGpt2Regex;
      }
    } else {
      fail(path + ": pre_tokenizer " + type + " is not supported (byte-level BPE: Split and ByteLevel)");
    }
  }
  if (!byte_level) fail(path + ": the tokenizer is not byte-level (no ByteLevel pre-tokenizer); only byte-level BPE is read");
  if (pattern.empty()) pattern = kGpt2Regex;
  t.regex_ = std::make_unique<Regex>(pattern, path);
  t.pattern_ = pattern;
  return t;
}

const char* BpeTokenizer::gpt2_pattern() { return kGpt2Regex; }

std::vector<std::string> BpeTokenizer::merges() const {
  std::vector<std::pair<int, std::string>> by_rank;
  for (const auto& [m, r] : merge_rank_) by_rank.emplace_back(r, m);
  std::sort(by_rank.begin(), by_rank.end());
  std::vector<std::string> out;
  for (auto& [r, m] : by_rank) out.push_back(std::move(m));
  return out;
}

int32_t BpeTokenizer::id_of(const std::string& piece) const {
  for (const auto& [p, id] : added_)
    if (p == piece) return id;
  auto it = vocab_.find(piece);
  return it == vocab_.end() ? -1 : it->second;
}

void BpeTokenizer::encode_piece(const std::string& bytes, std::vector<int32_t>& out) const {
  if (auto it = cache_.find(bytes); it != cache_.end()) {
    out.insert(out.end(), it->second.begin(), it->second.end());
    return;
  }
  std::vector<std::string> sym;
  for (unsigned char c : bytes) sym.push_back(byte_char_[c]);
  while (sym.size() > 1) {
    int best = INT_MAX;
    for (size_t i = 0; i + 1 < sym.size(); ++i)
      if (auto it = merge_rank_.find(sym[i] + " " + sym[i + 1]); it != merge_rank_.end()) best = std::min(best, it->second);
    if (best == INT_MAX) break;
    std::vector<std::string> next;
    for (size_t i = 0; i < sym.size(); ++i) {
      if (i + 1 < sym.size()) {
        auto it = merge_rank_.find(sym[i] + " " + sym[i + 1]);
        if (it != merge_rank_.end() && it->second == best) {
          next.push_back(sym[i] + sym[i + 1]);
          ++i;
          continue;
        }
      }
      next.push_back(sym[i]);
    }
    sym.swap(next);
  }
  std::vector<int32_t> ids;
  for (const std::string& s : sym) {
    auto it = vocab_.find(s);
    if (it == vocab_.end()) fail("tokenizer: the piece '" + s + "' is not in the vocabulary (the merges and vocab disagree)");
    ids.push_back(it->second);
  }
  out.insert(out.end(), ids.begin(), ids.end());
  cache_.emplace(bytes, std::move(ids));
}

std::vector<int32_t> BpeTokenizer::encode(const std::string& text) const {
  std::vector<int32_t> out;
  auto plain = [&](std::string seg) {
    if (seg.empty()) return;
    if (nfc_) {
      utf8proc_uint8_t* n = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(seg.c_str()));
      if (n) {
        seg = reinterpret_cast<const char*>(n);
        std::free(n);
      }
    }
    if (add_prefix_space_ && seg[0] != ' ') seg = " " + seg;
    for (const std::string& p : regex_->split(seg)) encode_piece(p, out);
  };
  size_t start = 0, i = 0;
  while (i < text.size()) {
    bool hit = false;
    for (const auto& [content, id] : added_) {
      if (!content.empty() && text.compare(i, content.size(), content) == 0) {
        plain(text.substr(start, i - start));
        out.push_back(id);
        i += content.size();
        start = i;
        hit = true;
        break;
      }
    }
    if (!hit) ++i;
  }
  plain(text.substr(start));
  return out;
}

std::string BpeTokenizer::token_text(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) return "";
  const std::string& p = pieces_[static_cast<size_t>(id)];
  if (is_added_[static_cast<size_t>(id)]) return p;
  std::string out;
  for (size_t i = 0; i < p.size();) {
    size_t n = 1;
    const unsigned char c = static_cast<unsigned char>(p[i]);
    if (c >= 0xf0) n = 4;
    else if (c >= 0xe0) n = 3;
    else if (c >= 0xc0) n = 2;
    auto it = char_byte_.find(p.substr(i, n));
    if (it != char_byte_.end()) out += static_cast<char>(it->second);
    i += n;
  }
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += token_text(id);
  return out;
}

std::string BpeTokenizer::piece(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < pieces_.size() ? pieces_[static_cast<size_t>(id)] : "";
}

}  // namespace moe
