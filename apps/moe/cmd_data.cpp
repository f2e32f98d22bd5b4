// cmd_data.cpp — `moe data`: prepare a corpus (held-out split, BPE tokenizer, token shards), resumably.
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "data/corpus.h"

namespace moe::cli {

void add_data(CLI::App& app) {
  static std::string corpus = "kjv", dir = "data";
  static int vocab = 4096, max_mb = 0, threads = 0;
  static bool force = false;
  auto* cmd = app.add_subcommand("data", "Prepare a corpus: text, held-out split, BPE tokenizer, token shards");
  cmd->add_option("--corpus", corpus, corpus_choices() + " | all (every corpus but linux)");
  cmd->add_option("--vocab-size", vocab, "Tokenizer vocabulary")->check(CLI::Range(256, 65535));
  cmd->add_option("--out", dir, "Folder for the prepared corpora");
  cmd->add_option("--max-mb", max_mb, "Size cap in MB of the corpora that have one (linux: 100, mix: 32)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_flag("--force", force, "Prepare again even if present");
  add_threads(cmd, threads);
  cmd->callback([] {
    apply_threads(threads);
    std::vector<std::string> names{corpus};
    if (corpus == "all") {
      names.clear();
      for (const CorpusSource& c : corpus_sources())
        if (c.in_all) names.push_back(c.name);
    }
    for (const std::string& n : names) prepare_corpus(n, dir, vocab, force, max_mb);
  });
}

}  // namespace moe::cli
