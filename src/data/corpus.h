// corpus.h — the corpora of docs/MECHANISMS.md §10, read from their Debian packages, and their
// preparation: held-out split, tokenizer (tokenizer.h), token shards (shard.h).
//
//   kjv        King James Bible (package bible-kjv, `bible -f Gen1:1-Rev22:21`), the default
//   fortunes   the fortune cookie files (package fortunes, /usr/share/games/fortunes)
//   c-headers  the C headers under /usr/include (libc6-dev and whatever else is installed)
//   pydoc      the Python 3.11 documentation's reStructuredText sources (python3.11-doc), ~11 MB
//   linux      the Linux 6.1 C sources (linux-source-6.1, not installed by the setup script), capped
//              at --max-mb (default 100)
//   mix        kjv, fortunes, c-headers and pydoc interleaved in units of 100 lines, each up to a
//              quarter of --max-mb (default 32)
//   file:PATH  any text file
//
// `moe data` writes, per corpus, into DIR/<corpus>/: train.txt, val.txt (a deterministic held-out
// split: every 20th block of 32 lines), tokenizer.model, train.bin and val.bin (little-endian uint16
// token ids) and meta.json. Preparation is resumable: stopped, it continues after its last whole stage
// (texts, tokenizer, each ~4 MB chunk of encoded text above 16 MB); encoding runs on every thread.
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
  // Its text, at most max_bytes where the corpus has a cap; throws moe::Error naming the package to
  // install when it is missing.
  std::string (*read)(size_t max_bytes);
  const char* prompt;    // the start of `moe train`'s sample
  int default_max_mb;    // its cap in MB when --max-mb is not given (0: it has no size flag)
  bool in_all;           // prepared by `moe data --corpus all` (its package comes with scripts/setup.sh)
};
const std::vector<CorpusSource>& corpus_sources();
std::vector<std::string> corpus_names();
// The corpus text (a named corpus, or file:PATH); throws moe::Error naming the Debian package to
// install when it is missing.
// max_mb > 0 replaces the corpus's default cap.
std::string corpus_text(const std::string& name, int max_mb = 0);
// The sample prompt for a model trained on the corpus ("And God said" for a file).
std::string corpus_prompt(const std::string& name);
// Split text into (train, val) by blocks of lines, deterministically.
std::pair<std::string, std::string> split_train_val(const std::string& text);
// An even sample of text: the first of every `every` blocks of 64 lines, in order (the trailing lines
// after the last whole block are left out). What a tokenizer is trained on when a text is too big.
std::string line_block_sample(const std::string& text, size_t every);

// Prepares DIR/<corpus>/ as described above; prints progress lines. Returns the folder.
// max_mb > 0 replaces the corpus's default cap (for the corpora that have one). A tokenizer (the path
// of a sentencepiece model with vocab_size pieces) replaces the corpus's own: the corpus is encoded
// with it into DIR/<corpus>@tok-<hash of the model>/ (a joint tokenizer over several corpora).
std::string prepare_corpus(const std::string& name, const std::string& dir, int vocab_size, bool force, int max_mb = 0,
                           const std::string& tokenizer = "");

}  // namespace moe
