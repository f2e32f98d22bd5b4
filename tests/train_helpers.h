// train_helpers.h — what the training tests share: a fresh temp folder, a small learnable corpus, a
// tiny model config on it (trained a few steps, if asked), and running the `moe` CLI (MOE_CLI) with
// its exit status and stderr.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/rng.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace moe {

inline std::string tmpdir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/moe_train_" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// A small synthetic corpus with structure to learn: numbered "verses" of repeated phrases.
inline std::string synthetic_text(int lines = 3000) {
  const char* words[] = {"the", "light", "was", "good", "and", "God", "said", "let", "there", "be", "waters", "earth"};
  std::string out;
  for (int line = 0; line < lines; ++line) {
    out += std::to_string(line % 50) + ":";
    for (int w = 0; w < 10; ++w) {
      out += " ";
      out += words[static_cast<size_t>(rng_uniform(4, static_cast<uint64_t>(line), static_cast<uint64_t>(w)) * 12.f) % 12];
    }
    out += ".\n";
  }
  return out;
}

// The settings of the tiny model, as `--set` arguments (tiny_run's config, for the CLI).
inline const std::vector<std::string>& tiny_sets() {
  static const std::vector<std::string> s = {"model.vocab_size=320", "model.hidden_size=32", "model.num_hidden_layers=2",
                                             "model.num_attention_heads=2", "model.intermediate_size=64",
                                             "model.max_position_embeddings=16", "model.moe_intermediate_size=32",
                                             "model.num_local_experts=4", "train.batch_size=4", "train.eval_every=5",
                                             "train.eval_windows=8", "train.warmup_steps=3"};
  return s;
}

inline RunConfig tiny_run(const std::string& dir) {
  const std::string corpus = dir + "/corpus.txt";
  if (!std::filesystem::exists(corpus)) std::ofstream(corpus) << synthetic_text();
  RunConfig c = load_run_config("", tiny_sets());
  c.train.corpus = "file:" + corpus;
  c.train.data_dir = dir + "/data";
  return c;
}

// tiny_run in a fresh tmpdir(name), trained `steps` steps into its run/ folder; returns the config.
inline RunConfig trained_tiny_run(const std::string& name, int steps) {
  RunConfig c = tiny_run(tmpdir(name));
  c.train.steps = steps;
  c.train.out = std::filesystem::path(c.train.data_dir).parent_path().string() + "/run";
  train_model(c);
  return c;
}

// `moe train` arguments for tiny_run(dir) writing to dir/run, plus `extra`.
inline std::string tiny_train_args(const std::string& dir, const std::string& extra) {
  tiny_run(dir);  // writes the corpus
  std::string a = "train";
  for (const std::string& s : tiny_sets()) a += " --set " + s;
  return a + " --set train.corpus=file:" + dir + "/corpus.txt --set train.data_dir=" + dir + "/data --set train.out=" + dir +
         "/run " + extra;
}

// Runs `[env] moe args`; returns its exit code (128 + N when killed by signal N) and its stderr.
inline int run_cli(const std::string& args, std::string* err, const std::string& env = "") {
  static int calls = 0;
  const std::string errfile =
      ::testing::TempDir() + "/moe_cli_err." + std::to_string(::getpid()) + "." + std::to_string(calls++) + ".txt";
  const int status = std::system((env + " " + std::string(MOE_CLI) + " " + args + " > /dev/null 2> " + errfile).c_str());
  std::ifstream in(errfile);
  std::stringstream ss;
  ss << in.rdbuf();
  *err = ss.str();
  std::filesystem::remove(errfile);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace moe
