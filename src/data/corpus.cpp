#include "data/corpus.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace moe {

static std::string run_command(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) fail("cannot run: " + cmd);
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

static std::string read_file(const fs::path& p) { return read_file(p.string(), "check it is readable"); }

namespace {

// The King James Bible: `bible -f Gen1:1-Rev22:21` prints "Ge1:1 In the beginning ..." lines; the
// reference is dropped, the verse kept.
std::string read_kjv() {
  if (!fs::exists("/usr/bin/bible"))
    fail("corpus kjv needs the King James Bible: apt-get install bible-kjv (or run scripts/setup.sh)");
  std::string raw = run_command("/usr/bin/bible -f 'Gen1:1-Rev22:21' 2>/dev/null");
  std::string out;
  out.reserve(raw.size());
  std::istringstream in(raw);
  std::string line;
  while (std::getline(in, line)) {
    size_t sp = line.find(' ');
    if (sp == std::string::npos || sp > 12) continue;
    out.append(line, sp + 1, std::string::npos);
    out += '\n';
  }
  if (out.size() < 1000000) fail("corpus kjv: `bible` printed too little text; reinstall bible-kjv");
  return out;
}

// The fortune cookie files, their "%" separator lines dropped.
std::string read_fortunes() {
  const fs::path dir = "/usr/share/games/fortunes";
  if (!fs::exists(dir)) fail("corpus fortunes needs the fortune files: apt-get install fortunes (or run scripts/setup.sh)");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && !e.path().has_extension()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string out;
  for (const auto& f : files) {
    std::istringstream in(read_file(f));
    std::string line;
    while (std::getline(in, line))
      if (line != "%") out += line + '\n';
  }
  return out;
}

// The C headers under /usr/include, in path order, the first 24 MB.
std::string read_c_headers() {
  const fs::path dir = "/usr/include";
  if (!fs::exists(dir / "stdio.h")) fail("corpus c-headers needs the C headers: apt-get install libc6-dev");
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied))
    if (e.is_regular_file() && e.path().extension() == ".h") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string out;
  for (const auto& f : files) {
    out += read_file(f);
    if (out.size() > (24u << 20)) break;  // 24 MB is plenty for a 2-core run
  }
  return out;
}

}  // namespace

const std::vector<CorpusSource>& corpus_sources() {
  static const std::vector<CorpusSource> sources = {
      {"kjv", "bible-kjv", &read_kjv, "And God said"},
      {"fortunes", "fortunes", &read_fortunes, "And God said"},
      {"c-headers", "libc6-dev", &read_c_headers, "#include <stdio.h>\n"},
  };
  return sources;
}

std::vector<std::string> corpus_names() {
  std::vector<std::string> names;
  for (const CorpusSource& c : corpus_sources()) names.push_back(c.name);
  return names;
}

static const CorpusSource* find_source(const std::string& name) {
  for (const CorpusSource& c : corpus_sources())
    if (name == c.name) return &c;
  return nullptr;
}

std::string corpus_text(const std::string& name) {
  if (name.rfind("file:", 0) == 0) {
    const fs::path p = name.substr(5);
    if (!fs::is_regular_file(p)) fail("corpus " + name + ": no such file");
    return read_file(p);
  }
  if (const CorpusSource* c = find_source(name)) return c->read();
  std::string known;
  for (const std::string& n : corpus_names()) known += n + ", ";
  fail("unknown corpus \"" + name + "\"; use " + known + "or file:PATH");
}

std::string corpus_prompt(const std::string& name) {
  const CorpusSource* c = find_source(name);
  return c ? c->prompt : "And God said";
}

std::pair<std::string, std::string> split_train_val(const std::string& text) {
  std::string train, val;
  std::istringstream in(text);
  std::string line;
  size_t i = 0;
  while (std::getline(in, line)) {
    ((i / 32) % 20 == 19 ? val : train) += line + '\n';
    ++i;
  }
  return {train, val};
}

namespace {

// FNV-1a, 64 bits: the content fingerprint of a file corpus.
std::string fnv1a_hex(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// What identifies the source of a corpus: for file:PATH the absolute path, size, modification time
// and content hash (an edited or another same-named file is prepared again); for the named corpora
// their name.
nlohmann::json corpus_source(const std::string& name, std::string* text) {
  if (name.rfind("file:", 0) != 0) return {{"corpus", name}};
  const fs::path p = fs::absolute(name.substr(5)).lexically_normal();
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) fail("corpus " + name + ": no such file; give file:PATH of a text file");
  *text = read_file(p);
  const auto mtime = fs::last_write_time(p, ec).time_since_epoch().count();
  return {{"corpus", name}, {"path", p.string()}, {"size", text->size()}, {"mtime", mtime}, {"fnv1a", fnv1a_hex(*text)}};
}

// The number of distinct characters (UTF-8 code points) of text: sentencepiece with character
// coverage 1 makes each a piece, beside the 256 byte pieces and <unk>.
size_t distinct_chars(const std::string& text) {
  std::set<std::string> chars;
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    chars.insert(text.substr(i, n));
    i += n;
  }
  return chars.size();
}

}  // namespace

std::string prepare_corpus(const std::string& name, const std::string& dir, int vocab_size, bool force) {
  std::string text;
  const nlohmann::json source = corpus_source(name, &text);
  // A file corpus gets a folder named after the file and its absolute path.
  const std::string folder = name.rfind("file:", 0) == 0
                                 ? "file-" + fs::path(name.substr(5)).stem().string() + "-" +
                                       fnv1a_hex(source["path"].get<std::string>()).substr(0, 8)
                                 : name;
  const fs::path out = fs::path(dir) / folder;
  const fs::path meta = out / "meta.json";
  if (!force && fs::exists(meta)) {
    // A meta.json of another shape (damaged, or from an older moe.cpp) means: prepare again.
    const auto j = nlohmann::json::parse(read_file(meta), nullptr, false);
    const bool ok = j.is_object() && j.contains("vocab_size") && j.contains("source");
    if (ok && j["vocab_size"] == vocab_size && j["source"] == source) return out.string();
    if (ok && j["source"] != source) std::printf("data: %s changed since it was prepared; preparing it again\n", name.c_str());
  }
  fs::create_directories(out);
  std::printf("data: reading corpus %s\n", name.c_str());
  std::fflush(stdout);
  if (text.empty()) text = corpus_text(name);
  auto [train, val] = split_train_val(text);
  const size_t lines = static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
  if (val.empty() || train.empty())
    fail("corpus " + name + " has " + std::to_string(lines) + " lines; its held-out split takes every 20th block of 32 "
         "lines, so it needs at least 640 lines (more for a useful validation set); use a bigger text");
  const size_t min_vocab = 257 + distinct_chars(train);
  if (static_cast<size_t>(vocab_size) < min_vocab)
    fail("corpus " + name + ": --vocab-size " + std::to_string(vocab_size) + " is too small: its " +
         std::to_string(min_vocab - 257) + " distinct characters, 256 byte pieces and <unk> need at least " +
         std::to_string(min_vocab) + "; use --vocab-size " + std::to_string(min_vocab) + " or more");
  write_file_atomic((out / "train.txt").string(), train);
  write_file_atomic((out / "val.txt").string(), val);
  std::printf("data: %s: %.1f MB train, %.2f MB validation; training a %d-token BPE tokenizer\n", name.c_str(),
              static_cast<double>(train.size()) / 1e6, static_cast<double>(val.size()) / 1e6, vocab_size);
  std::fflush(stdout);
  const std::string model = (out / "tokenizer.model").string();
  Tokenizer::train(train, vocab_size, model);
  Tokenizer tok;
  tok.load(model);
  std::vector<int32_t> tr = tok.encode(train), va = tok.encode(val);
  write_token_shard((out / "train.bin").string(), tr);
  write_token_shard((out / "val.bin").string(), va);
  nlohmann::json j = {{"corpus", name}, {"source", source}, {"vocab_size", vocab_size}, {"train_tokens", tr.size()},
                      {"val_tokens", va.size()}, {"train_bytes", train.size()}, {"val_bytes", val.size()}};
  write_file_atomic(meta.string(), j.dump(2) + "\n");
  std::printf("data: %s: %zu train tokens, %zu validation tokens (%.2f bytes/token) in %s\n", name.c_str(),
              tr.size(), va.size(), static_cast<double>(train.size()) / static_cast<double>(tr.size()),
              out.string().c_str());
  return out.string();
}

}  // namespace moe
