#include "apps/moe/common.h"

#include "core/parallel.h"
#include "data/corpus.h"

namespace moe::cli {

void add_threads(CLI::App* cmd, int& threads) {
  cmd->add_option("--threads", threads, "Threads (default: all cores / OMP_NUM_THREADS)")->check(CLI::NonNegativeNumber);
}

void apply_threads(int threads) {
  if (threads > 0) set_num_threads(threads);
}

std::string corpus_choices() {
  std::string s;
  for (const std::string& n : corpus_names()) s += n + " | ";
  return s + "file:PATH";
}

void add_allow_nonfinite(CLI::App* cmd, bool& flag) {
  cmd->add_flag("--allow-nonfinite", flag, "Load a checkpoint even if it holds NaN or infinite weights (forensics)");
}

}  // namespace moe::cli
