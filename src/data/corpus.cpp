#include "data/corpus.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string_view>
#include <tuple>

#include "core/check.h"
#include "core/error.h"
#include "core/files.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace moe {

// The command's standard output, read until it ends or `max_bytes` have come (then the pipe is closed
// and the command stops on SIGPIPE); the result may run past max_bytes by one read.
static std::string run_command(const std::string& cmd, size_t max_bytes = SIZE_MAX) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) fail("cannot run: " + cmd);
  std::string out;
  char buf[1 << 16];
  size_t n;
  while (out.size() < max_bytes && (n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

static std::string read_file(const fs::path& p) { return read_file(p.string(), "check it is readable"); }

namespace {

// The King James Bible: `bible -f Gen1:1-Rev22:21` prints "Ge1:1 In the beginning ..." lines; the
// reference is dropped, the verse kept.
std::string read_kjv(size_t) {
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
std::string read_fortunes(size_t) {
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
std::string read_c_headers(size_t) {
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

// The reStructuredText sources of the Python 3.11 documentation (package python3.11-doc), in path
// order: about 11 MB of English prose with code examples.
std::string read_pydoc(size_t) {
  const fs::path dir = "/usr/share/doc/python3.11/html/_sources";
  if (!fs::exists(dir / "contents.rst.txt"))
    fail("corpus pydoc needs the Python documentation sources: apt-get install python3.11-doc (or run scripts/setup.sh)");
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied))
    if (e.is_regular_file() && e.path().string().ends_with(".rst.txt")) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string out;
  for (const auto& f : files) {
    out += read_file(f);
    if (out.empty() || out.back() != '\n') out += '\n';
  }
  return out;
}

// The C sources (*.c and *.h) of the Linux kernel 6.1 (package linux-source-6.1), in the order of its
// tarball, up to max_bytes (whole files).
std::string read_linux(size_t max_bytes) {
  const char* tarball = "/usr/src/linux-source-6.1.tar.xz";
  if (!fs::exists(tarball))
    fail("corpus linux needs the kernel sources: apt-get install linux-source-6.1 (or run `scripts/setup.sh linux`)");
  // tar prints each file whole, one after the other.
  std::string out = run_command(std::string("tar -xJOf ") + tarball + " --wildcards '*.c' '*.h' 2>/dev/null", max_bytes);
  if (out.size() > max_bytes) out.resize(out.rfind('\n', max_bytes) + 1);  // whole lines
  if (out.size() < (1u << 20)) fail("corpus linux: tar gave too little text from " + std::string(tarball) + "; reinstall linux-source-6.1");
  return out;
}

// The mixture (docs/MECHANISMS.md §10): kjv, fortunes, c-headers and pydoc, each up to a quarter of
// max_bytes, interleaved in units of 100 lines in turn (a corpus that runs out leaves the turn), so
// that the held-out split and every stretch of training text sample all four.
std::string read_mix(size_t max_bytes) {
  const char* parts[] = {"kjv", "fortunes", "c-headers", "pydoc"};
  std::vector<std::vector<std::string_view>> units;  // per corpus, its units of 100 lines
  std::vector<std::string> texts;
  for (const char* name : parts) {
    std::string t = corpus_text(name);
    if (t.size() > max_bytes / 4) t.resize(t.rfind('\n', max_bytes / 4) + 1);
    texts.push_back(std::move(t));
  }
  for (const std::string& t : texts) {
    units.emplace_back();
    size_t start = 0, lines = 0;
    for (size_t i = 0; i < t.size(); ++i)
      if (t[i] == '\n' && ++lines % 100 == 0) {
        units.back().emplace_back(t.data() + start, i + 1 - start);
        start = i + 1;
      }
    if (start < t.size()) units.back().emplace_back(t.data() + start, t.size() - start);
  }
  std::string out;
  for (size_t u = 0;; ++u) {
    bool any = false;
    for (const auto& us : units)
      if (u < us.size()) {
        out.append(us[u]);
        any = true;
      }
    if (!any) break;
  }
  return out;
}

}  // namespace

const std::vector<CorpusSource>& corpus_sources() {
  static const std::vector<CorpusSource> sources = {
      {"kjv", "bible-kjv", &read_kjv, "And God said", 0, true},
      {"fortunes", "fortunes", &read_fortunes, "And God said", 0, true},
      {"c-headers", "libc6-dev", &read_c_headers, "#include <stdio.h>\n", 0, true},
      {"pydoc", "python3.11-doc", &read_pydoc, "The ", 0, true},
      {"linux", "linux-source-6.1", &read_linux, "#include <linux/", 100, false},
      {"mix", "bible-kjv fortunes libc6-dev python3.11-doc", &read_mix, "The ", 32, true},
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

std::string corpus_text(const std::string& name, int max_mb) {
  if (name.rfind("file:", 0) == 0) {
    const fs::path p = name.substr(5);
    if (!fs::is_regular_file(p)) fail("corpus " + name + ": no such file");
    return read_file(p);
  }
  if (const CorpusSource* c = find_source(name))
    return c->read(static_cast<size_t>(max_mb > 0 ? max_mb : c->default_max_mb) << 20);
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

std::string line_block_sample(const std::string& text, size_t every) {
  std::string out;
  size_t start = 0, lines = 0, block = 0;
  for (size_t i = 0; i < text.size(); ++i)
    if (text[i] == '\n' && ++lines % 64 == 0) {
      if (block++ % every == 0) out.append(text, start, i + 1 - start);
      start = i + 1;
    }
  return out;
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
// their name, and for those with a size cap the cap in MB.
nlohmann::json corpus_source(const std::string& name, int max_mb, std::string* text) {
  if (name.rfind("file:", 0) != 0) {
    const CorpusSource* c = find_source(name);
    if (!c) return {{"corpus", name}};  // corpus_text names the known corpora
    if (c->default_max_mb == 0) return {{"corpus", name}};
    return {{"corpus", name}, {"max_mb", max_mb > 0 ? max_mb : c->default_max_mb}};
  }
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

namespace {

// sentencepiece reads the first 200,000 lines it is given: a text above 32 MB is sampled evenly, in
// blocks of 64 lines, down to about 8 MB, so that its tokenizer sees all of it.
std::string tokenizer_sample(const std::string& train) {
  if (train.size() <= (32u << 20)) return train;
  return line_block_sample(train, train.size() / (8u << 20));
}

// Splits text into pieces of about `bytes`, each ending at a line end.
std::vector<std::string_view> line_chunks(const std::string& text, size_t bytes) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = std::min(text.size(), start + bytes);
    if (end < text.size()) {
      const size_t nl = text.find('\n', end);
      end = nl == std::string::npos ? text.size() : nl + 1;
    }
    out.emplace_back(text.data() + start, end - start);
    start = end;
  }
  return out;
}

// Encodes `text` into the shard at `path` through chunk files in `chunk_dir` (each written whole or not
// at all, so that a killed preparation resumes at the first missing chunk), in parallel, with progress.
// Returns the number of tokens.
size_t encode_to_shard(const Tokenizer& tok, const std::string& text, const std::string& path, const fs::path& chunk_dir,
                       const std::string& label) {
  // A text up to 16 MB is encoded whole; a bigger one in chunks of about 4 MB that end at a line end
  // (sentencepiece may join a line end to the next line's first characters, so a chunk boundary can
  // give a token or two another split than whole-text encoding would: deterministically).
  const std::vector<std::string_view> chunks = line_chunks(text, text.size() <= (16u << 20) ? text.size() : 4u << 20);
  fs::create_directories(chunk_dir);
  const std::string stem = fs::path(path).stem().string();
  auto chunk_path = [&](size_t i) {
    char name[64];
    std::snprintf(name, sizeof name, "%s-%05zu.bin", stem.c_str(), i);
    return (chunk_dir / name).string();
  };
  std::vector<size_t> todo;
  for (size_t i = 0; i < chunks.size(); ++i)
    if (!fs::exists(chunk_path(i))) todo.push_back(i);
  if (todo.size() < chunks.size())
    std::printf("data: %s: resuming, %zu of %zu chunks already encoded\n", label.c_str(), chunks.size() - todo.size(), chunks.size());
  Progress progress(static_cast<int64_t>(todo.size()), 0, "data: " + label + ": chunk");
  size_t done = 0, done_bytes = 0;
  std::string error;
  parallel_for_dynamic(todo.size(), [&](size_t k) {
    const size_t i = todo[k];
    try {
      write_token_shard(chunk_path(i), tok.encode(std::string(chunks[i])));
    } catch (const std::exception& e) {
#pragma omp critical(moe_encode_progress)
      error = e.what();
      return;
    }
#pragma omp critical(moe_encode_progress)
    {
      done_bytes += chunks[i].size();
      char detail[64];
      std::snprintf(detail, sizeof detail, "%.1f MB/s", static_cast<double>(done_bytes) / 1e6 / progress.elapsed_s());
      progress.update(static_cast<int64_t>(done++), detail);
    }
  });
  if (!error.empty()) fail(error);
  // The chunks, in order, make the shard.
  AtomicFile out(path);
  size_t bytes = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const std::string part = read_file(chunk_path(i), "prepare again with `moe data --force`");
    out.write(part.data(), part.size());
    bytes += part.size();
  }
  out.commit();
  for (size_t i = 0; i < chunks.size(); ++i) fs::remove(chunk_path(i));
  return bytes / 2;
}

}  // namespace

std::string prepare_corpus(const std::string& name, const std::string& dir, int vocab_size, bool force, int max_mb,
                           const std::string& tokenizer) {
  if (vocab_size > 65536)
    fail("model.vocab_size = " + std::to_string(vocab_size) +
         ": token shards hold uint16 ids, so a corpus can be prepared for vocabularies of at most 65536; such a model "
         "runs (eval --ids, logits, generate) but is not trained here");
  std::string text;
  nlohmann::json source = corpus_source(name, max_mb, &text);
  // A file corpus gets a folder named after the file and its absolute path.
  std::string folder = name.rfind("file:", 0) == 0
                           ? "file-" + fs::path(name.substr(5)).stem().string() + "-" +
                                 fnv1a_hex(source["path"].get<std::string>()).substr(0, 8)
                           : name;
  std::string given_model;  // the bytes of the given tokenizer
  if (!tokenizer.empty()) {
    given_model = read_file(tokenizer, "give the path of a sentencepiece model (a run's tokenizer.model)");
    Tokenizer t;
    t.load(tokenizer);
    if (t.vocab_size() != vocab_size)
      fail("tokenizer " + tokenizer + " has " + std::to_string(t.vocab_size()) + " tokens but the model's vocab_size is " +
           std::to_string(vocab_size) + "; set model.vocab_size = " + std::to_string(t.vocab_size()) + " or use another tokenizer");
    const std::string h = fnv1a_hex(given_model);
    source["tokenizer"] = h;
    folder += "@tok-" + h.substr(0, 8);
  }
  const fs::path out = fs::path(dir) / folder;
  const fs::path meta = out / "meta.json";
  // Without --max-mb, a corpus prepared at any cap is the one asked for (`moe train` of a corpus that
  // `moe data --max-mb 50` prepared).
  auto same_source = [&](nlohmann::json s) {
    nlohmann::json want = source;
    if (max_mb <= 0 && s.is_object()) s.erase("max_mb"), want.erase("max_mb");
    return s == want;
  };
  if (!force && fs::exists(meta)) {
    // A meta.json of another shape (damaged, or from an older moe.cpp) means: prepare again.
    const auto j = nlohmann::json::parse(read_file(meta), nullptr, false);
    const bool ok = j.is_object() && j.contains("vocab_size") && j.contains("source");
    if (ok && j["vocab_size"] == vocab_size && same_source(j["source"])) return out.string();
    if (ok && !same_source(j["source"])) std::printf("data: %s changed since it was prepared; preparing it again\n", name.c_str());
  }
  // Preparation goes in stages, each leaving whole files: the split texts, the tokenizer, the encoded
  // chunks, the shards, meta.json. prepare.json names what is being prepared; a rerun for the same
  // source and vocabulary resumes after the last finished stage (and chunk), anything else starts over.
  fs::create_directories(out);
  FolderLock lock(out.string(), "corpus preparation");
  nlohmann::json job = {{"source", source}, {"vocab_size", vocab_size}};
  const fs::path job_path = out / "prepare.json";
  const auto old_job = fs::exists(job_path) ? nlohmann::json::parse(read_file(job_path), nullptr, false) : nlohmann::json();
  const bool resume = !force && old_job.is_object() && old_job.value("vocab_size", 0) == vocab_size &&
                     old_job.contains("source") && same_source(old_job["source"]) && !fs::exists(meta);
  if (!resume) {
    for (const char* f : {"meta.json", "train.txt", "val.txt", "tokenizer.model", "train.bin", "val.bin"}) fs::remove(out / f);
    fs::remove_all(out / "chunks");
    write_file_atomic(job_path.string(), job.dump() + "\n");
  } else {
    job = old_job;  // what it was started with (its cap)
  }
  const int cap = job["source"].value("max_mb", max_mb);
  const fs::path train_txt = out / "train.txt", val_txt = out / "val.txt";
  std::string train, val;
  if (resume && fs::exists(train_txt) && fs::exists(val_txt)) {
    std::printf("data: %s: resuming a preparation that was stopped\n", name.c_str());
    train = read_file(train_txt.string(), "prepare again with `moe data --force`");
    val = read_file(val_txt.string(), "prepare again with `moe data --force`");
  } else {
    std::printf("data: reading corpus %s\n", name.c_str());
    std::fflush(stdout);
    if (text.empty()) text = corpus_text(name, cap);
    std::tie(train, val) = split_train_val(text);
    const size_t lines = static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
    if (val.empty() || train.empty())
      fail("corpus " + name + " has " + std::to_string(lines) + " lines; its held-out split takes every 20th block of 32 "
           "lines, so it needs at least 640 lines (more for a useful validation set); use a bigger text");
    std::string().swap(text);
    write_file_atomic(val_txt.string(), val);
    write_file_atomic(train_txt.string(), train);
  }
  const std::string model = (out / "tokenizer.model").string();
  if (!given_model.empty() && !fs::exists(model)) write_file_atomic(model, given_model);
  if (!fs::exists(model)) {
    const std::string sample = tokenizer_sample(train);
    const size_t min_vocab = 257 + distinct_chars(sample);
    if (static_cast<size_t>(vocab_size) < min_vocab)
      fail("corpus " + name + ": --vocab-size " + std::to_string(vocab_size) + " is too small: its " +
           std::to_string(min_vocab - 257) + " distinct characters, 256 byte pieces and <unk> need at least " +
           std::to_string(min_vocab) + "; use --vocab-size " + std::to_string(min_vocab) + " or more");
    std::printf("data: %s: %.1f MB train, %.2f MB validation; training a %d-token BPE tokenizer%s\n", name.c_str(),
                static_cast<double>(train.size()) / 1e6, static_cast<double>(val.size()) / 1e6, vocab_size,
                sample.size() < train.size() ? (" on an even sample of " + std::to_string(sample.size() >> 20) + " MB").c_str() : "");
    std::fflush(stdout);
    // Trained beside the model and renamed: a model file present is a whole one.
    const std::string tmp_model = (out / "tokenizer.tmp.model").string();
    Tokenizer::train(sample, vocab_size, tmp_model);
    fs::rename(tmp_model, model);
    fsync_dir(out.string());
  }
  Tokenizer tok;
  tok.load(model);
  const size_t n_train = encode_to_shard(tok, train, (out / "train.bin").string(), out / "chunks", name + " train");
  const size_t n_val = encode_to_shard(tok, val, (out / "val.bin").string(), out / "chunks", name + " validation");
  fs::remove_all(out / "chunks");
  nlohmann::json j = {{"corpus", name}, {"source", job["source"]}, {"vocab_size", vocab_size}, {"train_tokens", n_train},
                      {"val_tokens", n_val}, {"train_bytes", train.size()}, {"val_bytes", val.size()}};
  write_file_atomic(meta.string(), j.dump(2) + "\n");
  fs::remove(job_path);
  std::printf("data: %s: %zu train tokens, %zu validation tokens (%.2f bytes/token) in %s\n", name.c_str(), n_train,
              n_val, static_cast<double>(train.size()) / static_cast<double>(n_train), out.string().c_str());
  return out.string();
}

}  // namespace moe
