#include "train/data.h"

#include <fcntl.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "core/files.h"
#include "core/safetensors.h"

namespace fs = std::filesystem;

// Exported by libsentencepiece but not declared in its public headers: its log threshold, raised so
// that its INFO lines ("Running command: ...") stay off the user's terminal; failures come back as a
// status and are reported in our words.
namespace sentencepiece::logging {
void SetMinLogLevel(int v);
}

namespace moe {

const std::vector<std::string>& corpus_names() {
  static const std::vector<std::string> names = {"kjv", "fortunes", "c-headers"};
  return names;
}

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

std::string corpus_text(const std::string& name) {
  if (name.rfind("file:", 0) == 0) {
    const fs::path p = name.substr(5);
    if (!fs::is_regular_file(p)) fail("corpus " + name + ": no such file");
    return read_file(p);
  }
  if (name == "kjv") {
    if (!fs::exists("/usr/bin/bible"))
      fail("corpus kjv needs the King James Bible: apt-get install bible-kjv (or run scripts/setup.sh)");
    std::string raw = run_command("/usr/bin/bible -f 'Gen1:1-Rev22:21' 2>/dev/null");
    // Lines look like "Ge1:1 In the beginning ...": drop the reference, keep the verse.
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
  if (name == "fortunes") {
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
  if (name == "c-headers") {
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
  fail("unknown corpus \"" + name + "\"; use kjv, fortunes, c-headers or file:PATH");
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

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::~Tokenizer() = default;

void Tokenizer::train(const std::string& text, int vocab_size, const std::string& model_path) {
  // sentencepiece trains from a file of sentences: write the text to a temporary file beside the model.
  const std::string tmp = model_path + ".input.txt";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
  }
  std::string prefix = model_path.substr(0, model_path.size() - std::string(".model").size());
  auto run = [&](bool hard_limit) {
    std::ostringstream args;
    args << "--input=" << tmp << " --model_prefix=" << prefix << " --vocab_size=" << vocab_size
         << " --model_type=bpe --byte_fallback=true --character_coverage=1.0 --split_digits=true"
         << " --normalization_rule_name=identity --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true"
         << " --input_sentence_size=200000 --shuffle_input_sentence=false --num_threads=2"
         << " --max_sentence_length=8192 --bos_id=-1 --eos_id=-1 --unk_id=0 --pad_id=-1 --minloglevel=2"
         << " --hard_vocab_limit=" << (hard_limit ? "true" : "false");
    return sentencepiece::SentencePieceTrainer::Train(args.str());
  };
  sentencepiece::logging::SetMinLogLevel(2);
  auto status = run(true);
  int reachable = 0;  // when the text is too small for vocab_size: the vocabulary it does give
  if (!status.ok() && run(false).ok()) {
    Tokenizer t;
    t.load(model_path);
    reachable = t.vocab_size();
    fs::remove(model_path);
  }
  fs::remove(tmp);
  fs::remove(prefix + ".vocab");
  if (reachable > 0)
    fail("the training text (" + std::to_string(text.size()) + " bytes) gives a BPE vocabulary of at most " +
         std::to_string(reachable) + " tokens, fewer than --vocab-size " + std::to_string(vocab_size) +
         "; use --vocab-size " + std::to_string(reachable) + " (or less) or a bigger corpus");
  if (!status.ok()) fail("tokenizer training on " + std::to_string(text.size()) + " bytes of text failed (sentencepiece says: " +
                         status.ToString() + "); check the corpus is text");
}

void Tokenizer::load(const std::string& model_path) {
  auto status = sp_->Load(model_path);
  if (!status.ok()) fail("cannot load tokenizer " + model_path + ": " + status.ToString() + "; run `moe data` first");
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  sp_->Encode(text, &ids);
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &out);
  return out;
}

std::string Tokenizer::piece(int32_t id) const { return sp_->IdToPiece(id); }

std::string Tokenizer::token_text(int32_t id) const {
  const std::string p = sp_->IdToPiece(id);
  if (sp_->IsByte(id) && p.size() == 6) return std::string(1, static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
  if (sp_->IsControl(id) || sp_->IsUnknown(id)) return "";
  std::string out;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p.compare(i, 3, "\xe2\x96\x81") == 0) {  // U+2581, sentencepiece's space
      out += ' ';
      i += 2;
    } else {
      out += p[i];
    }
  }
  return out;
}
int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

TokenShard::TokenShard(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot open token shard " + path + "; run `moe data --corpus NAME` first");
  struct stat st {};
  ::fstat(fd, &st);
  if (st.st_size % 2 != 0 || st.st_size == 0) {
    ::close(fd);
    fail("token shard " + path + " is empty or truncated (odd size); rerun `moe data --force`");
  }
  n_ = static_cast<size_t>(st.st_size) / 2;
  void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail("cannot map token shard " + path);
  data_ = static_cast<const uint16_t*>(p);
}

TokenShard::~TokenShard() {
  if (data_) ::munmap(const_cast<uint16_t*>(data_), n_ * 2);
}

void write_token_shard(const std::string& path, const std::vector<int32_t>& ids) {
  std::string bytes(ids.size() * 2, '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    MOE_CHECK(ids[i] >= 0 && ids[i] < 65536, "token id " + std::to_string(ids[i]) + " does not fit a uint16 shard");
    bytes[2 * i] = static_cast<char>(ids[i] & 0xff);
    bytes[2 * i + 1] = static_cast<char>((ids[i] >> 8) & 0xff);
  }
  write_file_atomic(path, bytes);
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

void sample_batch(const TokenShard& shard, int B, int L, uint64_t seed, uint64_t step, int32_t* tokens,
                  int32_t* targets) {
  MOE_CHECK(shard.size() > static_cast<size_t>(L) + 1, "token shard " + shard.path() + " is shorter than one sequence");
  const uint64_t span = shard.size() - static_cast<size_t>(L) - 1;
  for (int b = 0; b < B; ++b) {
    auto w = philox4x32(seed, step * 4096 + static_cast<uint64_t>(b), 0x5a3d);
    const uint64_t r = (static_cast<uint64_t>(w[0]) << 32 | w[1]) % span;
    for (int i = 0; i < L; ++i) {
      tokens[b * L + i] = shard[r + static_cast<uint64_t>(i)];
      targets[b * L + i] = shard[r + static_cast<uint64_t>(i) + 1];
    }
  }
}

size_t eval_windows(const TokenShard& shard, int L, size_t max_windows) {
  return std::min(max_windows, (shard.size() - 1) / static_cast<size_t>(L));
}

void eval_window(const TokenShard& shard, int L, size_t i, int32_t* tokens, int32_t* targets) {
  const size_t r = i * static_cast<size_t>(L);
  for (int j = 0; j < L; ++j) {
    tokens[j] = shard[r + static_cast<size_t>(j)];
    targets[j] = shard[r + static_cast<size_t>(j) + 1];
  }
}

}  // namespace moe
