// cmd_data.cpp — `moe data`: prepare a corpus (held-out split, BPE tokenizer, token shards).
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "data/corpus.h"

namespace moe::cli {

void add_data(CLI::App& app) {
  static std::string corpus = "kjv", dir = "data";
  static int vocab = 4096;
  static bool force = false;
  auto* cmd = app.add_subcommand("data", "Prepare a corpus: text, held-out split, BPE tokenizer, token shards");
  cmd->add_option("--corpus", corpus, corpus_choices() + " | all");
  cmd->add_option("--vocab-size", vocab, "Tokenizer vocabulary")->check(CLI::Range(256, 65535));
  cmd->add_option("--out", dir, "Folder for the prepared corpora");
  cmd->add_flag("--force", force, "Prepare again even if present");
  cmd->callback([] {
    const std::vector<std::string> names = corpus == "all" ? corpus_names() : std::vector<std::string>{corpus};
    for (const std::string& n : names) prepare_corpus(n, dir, vocab, force);
  });
}

}  // namespace moe::cli
