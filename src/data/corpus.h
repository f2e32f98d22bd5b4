// corpus.h — the corpora of docs/MECHANISMS.md §10, read from their Debian packages, and their
// preparation: held-out split, tokenizer (tokenizer.h), token shards (shard.h).
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
#include <string>
#include <utility>
#include <vector>

namespace moe {

// A named corpus: how it is read from its Debian package, and how `moe train` starts the sample it
// shows at the end. To add a corpus: a reader and a line in corpus_sources() (corpus.cpp).
struct CorpusSource {
  const char* name;
  const char* package;   // the Debian package it comes from
  std::string (*read)();  // its text; throws moe::Error naming the package to install when it is missing
  const char* prompt;    // the start of `moe train`'s sample
};
const std::vector<CorpusSource>& corpus_sources();
std::vector<std::string> corpus_names();
// The corpus text (a named corpus, or file:PATH); throws moe::Error naming the Debian package to
// install when it is missing.
std::string corpus_text(const std::string& name);
// The sample prompt for a model trained on the corpus ("And God said" for a file).
std::string corpus_prompt(const std::string& name);
// Split text into (train, val) by blocks of lines, deterministically.
std::pair<std::string, std::string> split_train_val(const std::string& text);

// Prepares DIR/<corpus>/ as described above; prints progress lines. Returns the folder.
std::string prepare_corpus(const std::string& name, const std::string& dir, int vocab_size, bool force);

}  // namespace moe
