// Faults and bad input, each found by trying to break the tool on purpose: a kill between the
// checkpoint's files, a full disk, divergent optimizer settings, NaN weights, two writers, resume
// without a config, same-named corpora, integer overflow in configs, and the messages that reach
// the user. Each test fails on the code before the fix it covers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "train/checkpoint.h"
#include "data/corpus.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "train/run_config.h"
#include "train_helpers.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

std::string bytes_of(const std::string& path) { return read_file(path, "test"); }

bool has_temp_files(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) return true;
  return false;
}

int lines_in(const std::string& err) { return static_cast<int>(std::count(err.begin(), err.end(), '\n')); }

// Trains the tiny model 3 steps of a 6-step schedule into dir/run, a checkpoint each step.
void first_half(const std::string& dir) {
  std::string err;
  ASSERT_EQ(run_cli(tiny_train_args(dir, "--set train.steps=6 --set train.stop_after=3 --set train.save_every=1"), &err), 0)
      << err;
  ASSERT_EQ(latest_checkpoint(dir + "/run").step, 3);
}

// The model of the whole 6-step schedule trained without interruption, byte for byte.
std::string straight_model(const std::string& dir) {
  std::string err;
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--set train.steps=6 --set train.save_every=1 --set train.out=" + dir + "/straight"), &err), 0)
      << err;
  return bytes_of(latest_checkpoint(dir + "/straight").dir + "/model.safetensors");
}

TEST(Checkpoint, KillBetweenModelAndOptimizerKeepsThePreviousOneAndResumesExactly) {
  const std::string dir = tmpdir("kill-between");
  first_half(dir);
  const std::string before = bytes_of(dir + "/run/step-00000003/model.safetensors");
  std::string err;
  // The writer dies right after model.safetensors of step 4, before its optimizer state.
  const int rc = run_cli(tiny_train_args(dir, "--resume --set train.stop_after=0"), &err, "MOE_FAULT=kill-after:model.safetensors");
  EXPECT_EQ(rc, 128 + 9) << err;
  EXPECT_EQ(latest_checkpoint(dir + "/run").step, 3);
  EXPECT_EQ(bytes_of(dir + "/run/step-00000003/model.safetensors"), before);
  EXPECT_TRUE(has_temp_files(dir + "/run"));  // the half-written step-00000004.tmp.<pid>
  // The next resume cleans it up, continues from step 3, and ends where an uninterrupted run ends.
  ASSERT_EQ(run_cli(tiny_train_args(dir, "--resume --set train.stop_after=0"), &err), 0) << err;
  EXPECT_FALSE(has_temp_files(dir + "/run"));
  EXPECT_EQ(latest_checkpoint(dir + "/run").step, 6);
  EXPECT_EQ(bytes_of(latest_checkpoint(dir + "/run").dir + "/model.safetensors"), straight_model(dir));
  EXPECT_EQ(list_checkpoints(dir + "/run").size(), 2u);  // train.keep_checkpoints = 2
}

TEST(Checkpoint, FullDiskFailsWithOneLineAndKeepsThePreviousOne) {
  const std::string dir = tmpdir("enospc");
  first_half(dir);
  const std::string before = bytes_of(dir + "/run/step-00000003/model.safetensors");
  std::string err;
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--resume --set train.stop_after=0"), &err, "MOE_FAULT=enospc:optimizer.safetensors"), 1);
  EXPECT_NE(err.find("optimizer.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("No space left on device"), std::string::npos) << err;
  EXPECT_EQ(lines_in(err), 1) << err;
  EXPECT_EQ(latest_checkpoint(dir + "/run").step, 3);
  EXPECT_EQ(bytes_of(dir + "/run/step-00000003/model.safetensors"), before);
  EXPECT_FALSE(has_temp_files(dir + "/run"));
  ASSERT_EQ(run_cli(tiny_train_args(dir, "--resume --set train.stop_after=0"), &err), 0) << err;
  EXPECT_EQ(bytes_of(latest_checkpoint(dir + "/run").dir + "/model.safetensors"), straight_model(dir));
}

TEST(Checkpoint, AWriteKilledAnywhereLeavesTheTargetWholeOrOld) {
  const std::string dir = tmpdir("atomic");
  write_file_atomic(dir + "/f.txt", "old");
  fs::path stale = dir + "/f.txt.tmp.999999";
  std::ofstream(stale) << "half";
  EXPECT_EQ(remove_temp_files(dir), 1);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_EQ(bytes_of(dir + "/f.txt"), "old");
}

TEST(Divergence, HugeLearningRateStopsWithAnErrorAndKeepsTheGoodCheckpoint) {
  const std::string dir = tmpdir("diverge");
  first_half(dir);
  const std::string good = bytes_of(dir + "/run/step-00000003/model.safetensors");
  std::string err;
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--resume --set train.stop_after=0 --set train.steps=12 --set train.lr=1e30"), &err), 1);
  EXPECT_NE(err.find("training diverged at step"), std::string::npos) << err;
  EXPECT_NE(err.find("train.lr"), std::string::npos) << err;
  EXPECT_EQ(lines_in(err), 1) << err;
  EXPECT_EQ(latest_checkpoint(dir + "/run").step, 3);
  EXPECT_EQ(bytes_of(dir + "/run/step-00000003/model.safetensors"), good);
  EXPECT_TRUE(fs::exists(dir + "/run/step-00000004.diverged"));  // the update that broke it, set aside
  // Every bad step is in the metrics with its reason; eval of the run reads the good checkpoint.
  std::ifstream in(dir + "/run/metrics.jsonl");
  std::string line;
  int skipped = 0;
  while (std::getline(in, line)) skipped += nlohmann::json::parse(line).contains("skipped");
  EXPECT_EQ(skipped, 5);  // train.max_bad_steps
  EXPECT_EQ(run_cli("eval --windows 4 --ckpt " + dir + "/run", &err), 0) << err;
}

TEST(Divergence, LossSpikeCountsAsABadStep) {
  const std::string dir = tmpdir("spike");
  std::string err;
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--set train.steps=20 --set train.lr=100"), &err), 1);
  EXPECT_NE(err.find("spike_factor"), std::string::npos) << err;
  // With the rule off and enough bad steps allowed, the same run is let through its finite losses.
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--overwrite --set train.steps=3 --set train.spike_factor=0"), &err), 0) << err;
}

TEST(Divergence, OptimizerSettingsAreValidated) {
  for (const char* s : {"train.lr=inf", "train.lr=nan", "train.lr=-1", "train.beta1=1", "train.beta2=1.5",
                        "train.beta1=-0.1", "train.weight_decay=-1", "train.max_bad_steps=0", "train.spike_factor=0.5"}) {
    const std::string key = std::string(s).substr(0, std::string(s).find('='));
    try {
      load_run_config("", {s});
      FAIL() << s;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key.substr(6)), std::string::npos) << e.what();
    }
  }
}

TEST(Checkpoint, NonFiniteWeightsAreRefusedUnlessAllowed) {
  const std::string dir = tmpdir("nan-weights");
  first_half(dir);
  const std::string w = latest_checkpoint(dir + "/run").dir + "/model.safetensors";
  TensorFile f = load_safetensors(w);
  f.tensors.at("model.layers.0.mlp.experts.w2")[5] = std::numeric_limits<float>::quiet_NaN();
  save_safetensors(w, f);  // same size: the manifest still matches
  std::string err;
  for (const std::string& cmd : {"eval --windows 4 --ckpt " + dir + "/run", "generate --max-tokens 2 --prompt a --ckpt " + dir + "/run",
                                "inspect --ckpt " + dir + "/run", tiny_train_args(dir, "--resume --set train.stop_after=0")}) {
    EXPECT_EQ(run_cli(cmd, &err), 1) << cmd;
    EXPECT_NE(err.find("model.layers.0.mlp.experts.w2"), std::string::npos) << err;
    EXPECT_NE(err.find("--allow-nonfinite"), std::string::npos) << err;
  }
  EXPECT_EQ(run_cli("inspect --allow-nonfinite --ckpt " + dir + "/run", &err), 0) << err;
}

TEST(RunFolder, ASecondWriterIsToldWhoHoldsIt) {
  const std::string dir = tmpdir("lock");
  first_half(dir);
  std::string err;
  {
    const FolderLock held(dir + "/run", "test");
    EXPECT_EQ(run_cli(tiny_train_args(dir, "--resume --set train.stop_after=0"), &err), 1);
    EXPECT_NE(err.find("PID " + std::to_string(::getpid())), std::string::npos) << err;
    EXPECT_EQ(latest_checkpoint(dir + "/run").step, 3);
  }
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--resume --set train.stop_after=0"), &err), 0) << err;
}

TEST(RunFolder, TwoTrainingProcessesNeverShareAFolder) {
  const std::string dir = tmpdir("two-writers");
  first_half(dir);
  // A long run in the background, then a second one into the same folder while it trains.
  const std::string pidfile = dir + "/first.pid";
  const std::string first = std::string(MOE_CLI) + " " +
                            tiny_train_args(dir, "--resume --set train.stop_after=0 --set train.steps=1000000") +
                            " > /dev/null 2>&1 & echo $! > " + pidfile;
  ASSERT_EQ(std::system(first.c_str()), 0);
  std::string pid;
  for (int i = 0; i < 200 && (pid.empty() || read_file(dir + "/run/.lock", "test").rfind(pid, 0) != 0); ++i) {
    ::usleep(50000);
    std::ifstream(pidfile) >> pid;
  }
  ASSERT_FALSE(pid.empty());
  ASSERT_EQ(read_file(dir + "/run/.lock", "test").rfind(pid, 0), 0u) << "the first run never took the lock";
  std::string err;
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--resume --set train.stop_after=0"), &err), 1);
  EXPECT_NE(err.find("in use by another moe train (PID " + pid + ")"), std::string::npos) << err;
  ASSERT_EQ(std::system(("kill -9 " + pid).c_str()), 0);
  for (int i = 0; i < 100 && std::system(("kill -0 " + pid + " 2>/dev/null").c_str()) == 0; ++i) ::usleep(50000);
  // The first run's folder is consistent and the lock died with it.
  EXPECT_NO_THROW(latest_checkpoint(dir + "/run"));
  EXPECT_NO_THROW(FolderLock(dir + "/run", "test"));
}

TEST(RunFolder, ResumeNeedsAConfigAndANewRunNeedsAnEmptyFolder) {
  const std::string dir = tmpdir("resume-config");
  first_half(dir);
  std::string err;
  // Training into a folder that holds a run asks for --resume or --overwrite.
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--set train.steps=2"), &err), 1);
  EXPECT_NE(err.find("--resume"), std::string::npos) << err;
  EXPECT_NE(err.find("--overwrite"), std::string::npos) << err;
  EXPECT_EQ(latest_checkpoint(dir + "/run").step, 3);
  // --resume without config.json is an error, not the defaults.
  fs::remove(dir + "/run/config.json");
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--resume"), &err), 1);
  EXPECT_NE(err.find("config.json"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir + "/run/config.json"));
  // --overwrite starts again.
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--overwrite --set train.steps=2"), &err), 0) << err;
  EXPECT_EQ(latest_checkpoint(dir + "/run").step, 2);
  EXPECT_EQ(list_checkpoints(dir + "/run").size(), 1u);
}

TEST(Corpus, SameNamedFilesAndEditedFilesArePreparedApart) {
  const std::string dir = tmpdir("corpus-key");
  fs::create_directories(dir + "/a");
  fs::create_directories(dir + "/b");
  std::ofstream(dir + "/a/text.txt") << synthetic_text(700);
  std::ofstream(dir + "/b/text.txt") << synthetic_text(900);
  const std::string pa = prepare_corpus("file:" + dir + "/a/text.txt", dir + "/data", 320, false);
  const std::string pb = prepare_corpus("file:" + dir + "/b/text.txt", dir + "/data", 320, false);
  EXPECT_NE(pa, pb);
  EXPECT_EQ(bytes_of(pa + "/train.txt"), split_train_val(synthetic_text(700)).first);
  EXPECT_EQ(bytes_of(pb + "/train.txt"), split_train_val(synthetic_text(900)).first);
  // An edited file is prepared again, into the same folder.
  std::ofstream(dir + "/a/text.txt") << synthetic_text(1000);
  EXPECT_EQ(prepare_corpus("file:" + dir + "/a/text.txt", dir + "/data", 320, false), pa);
  EXPECT_EQ(bytes_of(pa + "/train.txt"), split_train_val(synthetic_text(1000)).first);
}

TEST(Corpus, TooSmallForItsVocabularyOrSplitIsRefusedWithWhatWorks) {
  const std::string dir = tmpdir("corpus-small");
  std::ofstream(dir + "/short.txt") << synthetic_text(100);
  std::ofstream(dir + "/tiny.txt") << synthetic_text(700);
  std::string err;
  EXPECT_EQ(run_cli("data --corpus file:" + dir + "/short.txt --vocab-size 320 --out " + dir + "/data", &err), 1);
  EXPECT_NE(err.find("640 lines"), std::string::npos) << err;
  EXPECT_EQ(run_cli("data --corpus file:" + dir + "/tiny.txt --vocab-size 256 --out " + dir + "/data", &err), 1);
  EXPECT_NE(err.find("--vocab-size 2"), std::string::npos) << err;  // the smallest that works
  EXPECT_EQ(run_cli("data --corpus file:" + dir + "/tiny.txt --vocab-size 60000 --out " + dir + "/data", &err), 1);
  EXPECT_NE(err.find("at most"), std::string::npos) << err;
  EXPECT_EQ(err.find("sentencepiece"), std::string::npos) << err;
  EXPECT_EQ(lines_in(err), 1) << err;
}

TEST(RunConfig, IntegersAreRangeCheckedNeverWrappedOrTruncated) {
  for (const char* s : {"model.hidden_size=4294967552", "model.num_local_experts=8.9", "model.hidden_size=99999999999",
                        "train.seed=-1", "train.steps=1e3"}) {
    const std::string key = std::string(s).substr(0, std::string(s).find('='));
    try {
      load_run_config("", {s});
      FAIL() << s;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("\"" + key + "\""), std::string::npos) << e.what();
    }
  }
  const std::string dir = tmpdir("toml-range");
  std::ofstream(dir + "/c.toml") << "[model]\nhidden_size = 4294967552\n";
  EXPECT_THROW(load_run_config(dir + "/c.toml", {}), Error);
  // A size that parses but cannot fit in memory names the setting before anything is allocated.
  try {
    load_run_config("", {"model.hidden_size=60000"});
    ModelConfig m = load_run_config("", {"model.hidden_size=60000"}).model;
    m.check_memory(16.0, 0.0, "train");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.hidden_size"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("GiB"), std::string::npos) << e.what();
  }
}

TEST(Cli, NoRawLibraryTextAndUsageErrorsExitTwo) {
  std::string err;
  EXPECT_EQ(run_cli("train --no-such-flag", &err), 2);
  EXPECT_EQ(lines_in(err), 1) << err;
  EXPECT_EQ(run_cli("eval", &err), 2);  // --ckpt is required
  const std::string dir = tmpdir("raw");
  first_half(dir);
  // A damaged manifest: a step that is not a number.
  const std::string m = latest_checkpoint(dir + "/run").dir + "/manifest.json";
  nlohmann::json j = nlohmann::json::parse(bytes_of(m));
  j["optimizer_steps"] = "three";
  std::ofstream(m) << j.dump();
  EXPECT_EQ(run_cli(tiny_train_args(dir, "--resume --set train.stop_after=0"), &err), 1);
  EXPECT_NE(err.find("manifest.json"), std::string::npos) << err;
  EXPECT_EQ(err.find("json.exception"), std::string::npos) << err;
  EXPECT_EQ(err.find("stoll"), std::string::npos) << err;
  // safetensors headers of the wrong shapes.
  for (const char* h : {R"({"__metadata__": [1, 2]})", R"({"w": 3})", R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})",
                                   R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})"}) {
    const std::string header = h;
    std::string buf(8, '\0');
    for (int i = 0; i < 8; ++i) buf[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    buf += header;
    try {
      parse_safetensors(buf.data(), buf.size(), "test", [](const std::string&, const std::vector<int64_t>&) { return nullptr; });
      FAIL() << header;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).find("json.exception"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace moe
