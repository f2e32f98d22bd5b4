// Training end to end on a small text corpus: tokenizer round trip, config errors, resume equivalence
// (20 steps ≡ 10 + resume 10, bit for bit), metrics lines, and clear errors with a non-zero exit for
// corrupted checkpoints and unknown config keys.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/profile.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "data/corpus.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "model/transformer.h"
#include "train/run_config.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "train_helpers.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

TEST(Tokenizer, RoundTripsTextAndBytes) {
  const std::string dir = tmpdir("tok");
  const std::string text = synthetic_text();
  Tokenizer::train(text, 320, dir + "/t.model");
  Tokenizer tok;
  tok.load(dir + "/t.model");
  EXPECT_EQ(tok.vocab_size(), 320);
  for (const std::string& s : {std::string("And God said, let there be light."), std::string("unseen wörds ∑ 123 \t tabs"),
                              std::string("7: the earth was good.")}) {
    std::vector<int32_t> ids = tok.encode(s);
    EXPECT_EQ(tok.decode(ids), s);
    // Streaming the tokens one by one gives the same text (with the leading space of the first piece).
    std::string streamed;
    for (int32_t id : ids) streamed += tok.token_text(id);
    EXPECT_EQ(streamed.substr(streamed.size() - s.size()), s);
  }
}

// Trains c for `steps` into dir/straight, and into dir/resumed stopped after `stop` steps then
// resumed: the two runs of one schedule.
void train_straight_and_resumed(RunConfig c, const std::string& dir, int steps, int stop) {
  c.train.steps = steps;
  c.train.out = dir + "/straight";
  train_model(c);
  c.train.out = dir + "/resumed";
  c.train.stop_after = stop;
  train_model(c);
  c.train.stop_after = 0;
  train_model(c, {.resume = true});
}

// Every tensor of the named checkpoint files is byte-identical in dir/straight and dir/resumed.
void expect_same_checkpoints(const std::string& dir, const std::vector<std::string>& files) {
  for (const std::string& f : files) {
    TensorFile a = load_safetensors(latest_checkpoint(dir + "/straight").dir + "/" + f),
               b = load_safetensors(latest_checkpoint(dir + "/resumed").dir + "/" + f);
    ASSERT_EQ(a.tensors.size(), b.tensors.size()) << f;
    for (auto& [name, t] : a.tensors)
      ASSERT_EQ(std::memcmp(t.data(), b.tensors.at(name).data(), t.numel() * 4), 0) << f << " " << name;
  }
}

TEST(RunConfig, UnknownKeyAndWrongTypeNameTheKey) {
  try {
    load_run_config("", {"model.hidden_sise=64"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown key \"model.hidden_sise\""), std::string::npos) << e.what();
  }
  try {
    load_run_config("", {"train.steps=lots"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.steps"), std::string::npos) << e.what();
  }
  const std::string dir = tmpdir("cfg");
  std::ofstream(dir + "/bad.toml") << "[model]\nhidden_size = 64\nnum_expert = 4\n";
  try {
    load_run_config(dir + "/bad.toml", {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.num_expert"), std::string::npos) << e.what();
  }
  // Round trip through the checkpoint JSON.
  RunConfig c = load_run_config("", {"model.router=sigmoid_bias", "train.steps=7"});
  RunConfig d = run_config_from_json(run_config_to_json(c), "test");
  EXPECT_EQ(d.model.moe.router, RouterKind::sigmoid_bias);
  EXPECT_EQ(d.train.steps, 7);
}

// Every key of the one field table reaches its own field: each set to a value unlike its default is
// read back from the config JSON (which the same table writes) under its own key, and no other key
// moves. A mistyped key is answered with the nearest one.
TEST(RunConfig, EveryKeyOfTheTableReachesItsField) {
  const nlohmann::json keys = run_config_keys();
  ASSERT_GT(keys.size(), 60u);
  const nlohmann::json defaults = nlohmann::json::parse(run_config_to_json(RunConfig{}));
  auto at = [](const nlohmann::json& j, const std::string& key) {
    const size_t dot = key.find('.');
    return j.at(key.substr(0, dot)).at(key.substr(dot + 1));
  };
  size_t checked = 0;
  for (const auto& k : keys) {
    const std::string key = k["key"], type = k["type"];
    nlohmann::json v;  // a value of the key's type, different from its default
    if (type == "integer") v = k["default"].get<int64_t>() + 1;
    else if (type == "number") v = k["default"].get<double>() * 0.5 + 0.25;
    else if (type == "true/false") v = !k["default"].get<bool>();
    else if (type == "string") v = k["default"].get<std::string>().append("-x");
    else if (type == "list of integers") v = nlohmann::json::array({1});
    else v = type.substr(type.rfind(' ') + 1);  // an enum: its last choice
    if (v == k["default"]) v = type.substr(0, type.find(' '));  // an enum whose default is its last choice
    ASSERT_NE(v, k["default"]) << key;
    RunConfig c;
    set_run_config_value(c, key, v);
    const nlohmann::json j = nlohmann::json::parse(run_config_to_json(c));
    if (v.is_number_float()) {
      EXPECT_FLOAT_EQ(at(j, key).get<float>(), v.get<float>()) << key;
    } else {
      EXPECT_EQ(at(j, key), v) << key;
    }
    for (const auto& other : keys) {
      if (other["key"] == key) continue;
      EXPECT_EQ(at(j, other["key"]), at(defaults, other["key"])) << key << " moved " << other["key"];
    }
    ++checked;
  }
  EXPECT_EQ(checked, keys.size());
  try {
    load_run_config("", {"model.num_local_expert=4"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean model.num_local_experts?"), std::string::npos) << e.what();
  }
  // `moe keys --json` prints the same list.
  FILE* p = popen((std::string(MOE_CLI) + " keys --json").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0);
  EXPECT_EQ(nlohmann::json::parse(out), keys);
}

TEST(Train, ResumeContinuesTheSameRunBitForBit) {
  const std::string dir = tmpdir("resume");
  train_straight_and_resumed(tiny_run(dir), dir, 20, 10);  // same 20-step schedule, stopped half way
  // Same weights and optimizer state, byte for byte.
  expect_same_checkpoints(dir, {"model.safetensors", "optimizer.safetensors"});
  // Same losses, and every step logged once with the fields of a metrics line.
  auto lines = [](const std::string& p) {
    std::vector<nlohmann::json> v;
    std::ifstream in(p);
    std::string l;
    while (std::getline(in, l)) v.push_back(nlohmann::json::parse(l));
    return v;
  };
  auto a = lines(dir + "/straight/metrics.jsonl"), b = lines(dir + "/resumed/metrics.jsonl");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i;
    for (const char* k : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "moe"}) EXPECT_TRUE(a[i].contains(k)) << k;
    const auto& layer = a[i]["moe"][0];
    for (const char* k : {"load", "cv", "max_mean", "dropped", "experts_used", "entropy", "consecutive_same", "aux", "z"})
      EXPECT_TRUE(layer.contains(k)) << k;
  }
  EXPECT_TRUE(a[4].contains("val_loss"));
  // Training lowers the loss on this learnable corpus.
  EXPECT_LT(a.back()["ce"].get<double>(), a.front()["ce"].get<double>() - 0.5);
}

// Every router of docs/MECHANISMS.md §2 trains the tiny model without NaN, lowers the loss, and logs the router
// metrics of docs/MECHANISMS.md §8 for every MoE layer.
class EveryRouter : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryRouter, TrainsWithoutNaNAndLogsRouterMetrics) {
  const std::string router = GetParam();
  const std::string dir = tmpdir("router-" + router);
  std::vector<std::string> sets = {"model.router=" + router};
  if (router == "hash") sets.push_back("model.router_aux_loss_coef=0");
  if (router == "base") sets.push_back("model.num_experts_per_tok=1");
  if (router == "noisy_topk") sets.push_back("model.noisy_loss_coef=0.01");
  RunConfig c = tiny_run(dir);
  const RunConfig base = c;
  c = load_run_config("", sets, &base);
  c.train.steps = 30;
  c.train.out = dir + "/run";
  const TrainSummary s = train_model(c);
  EXPECT_TRUE(std::isfinite(s.val_loss));
  std::ifstream in(dir + "/run/metrics.jsonl");
  std::string line;
  std::vector<nlohmann::json> rows;
  while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 30u);
  for (const auto& r : rows) {
    ASSERT_TRUE(std::isfinite(r["loss"].get<double>())) << "step " << r["step"];
    ASSERT_TRUE(std::isfinite(r["grad_norm"].get<double>())) << "step " << r["step"];
    ASSERT_EQ(r["moe"].size(), 2u);
    for (const char* k : {"load", "cv", "max_mean", "cv_importance", "dropped", "unrouted", "experts_used", "entropy",
                          "consecutive_same", "aux", "z"})
      EXPECT_TRUE(r["moe"][0].contains(k)) << k;
  }
  EXPECT_LT(rows.back()["ce"].get<double>(), rows.front()["ce"].get<double>() - 0.5);
  if (router == "base" || router == "expert_choice") {  // balanced by construction in training
    EXPECT_NEAR(rows.back()["moe"][0]["max_mean"].get<double>(), 1.0, 1e-9);
  }
  if (router == "reinforce") {
    EXPECT_TRUE(rows.back()["moe"][0].contains("rl"));
  }
}

INSTANTIATE_TEST_SUITE_P(Routers, EveryRouter,
                         ::testing::Values("topk_softmax", "softmax_topk", "noisy_topk", "sigmoid_bias", "hash", "base",
                                           "sbase", "reinforce", "expert_choice"));

TEST(Train, ReinforceResumesBitForBitWithItsBaseline) {
  const std::string dir = tmpdir("resume-rl");
  RunConfig base = tiny_run(dir);
  train_straight_and_resumed(load_run_config("", {"model.router=reinforce"}, &base), dir, 12, 6);
  TensorFile a = load_safetensors(latest_checkpoint(dir + "/straight").dir + "/model.safetensors");
  ASSERT_TRUE(a.tensors.count("model.layers.0.mlp.router.baseline"));
  EXPECT_EQ(a.tensors.at("model.layers.0.mlp.router.baseline")[1], 1.f);
  expect_same_checkpoints(dir, {"model.safetensors"});
}

// A PEER model (block 1 of 2) trains with gradient accumulation, logs its expert usage, and resumes
// bit for bit: the full tables, BatchNorm's running statistics and the lazy Adam moments are in the
// checkpoint. Its TOML subtable [model.peer] is read, and a bad value names its key.
TEST(Train, PeerTrainsAndResumesBitForBit) {
  const std::string dir = tmpdir("resume-peer");
  std::ofstream(dir + "/peer.toml") << "[model]\nffn = \"peer\"\nsparse_layers = [1]\n[model.peer]\nn_keys = 16\nheads = 2\n"
                                       "top_k = 4\nd_key = 8\nscore = \"sigmoid\"\n";
  RunConfig base = tiny_run(dir);
  RunConfig c = load_run_config(dir + "/peer.toml", {"train.grad_accum=2"}, &base);
  EXPECT_EQ(c.model.peer.n_keys, 16);
  EXPECT_EQ(c.model.peer.score, PeerScore::sigmoid);
  EXPECT_EQ(c.model.sparse_layers, std::vector<int>{1});
  train_straight_and_resumed(c, dir, 12, 6);
  expect_same_checkpoints(dir, {"model.safetensors", "optimizer.safetensors"});
  TensorFile w = load_safetensors(latest_checkpoint(dir + "/straight").dir + "/model.safetensors");
  EXPECT_EQ(w.tensors.at("model.layers.1.mlp.experts.u").shape(), (std::vector<int64_t>{256, 32}));
  EXPECT_TRUE(w.tensors.count("model.layers.1.mlp.query_bn.running_var"));
  std::ifstream in(dir + "/straight/metrics.jsonl");
  std::string line;
  std::vector<nlohmann::json> rows;
  while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 12u);
  EXPECT_GT(rows.back()["peer"][0]["usage"].get<double>(), 0.0);
  EXPECT_LT(rows.back()["ce"].get<double>(), rows.front()["ce"].get<double>() - 0.5);
  std::ofstream(dir + "/bad.toml") << "[model]\nffn = \"peer\"\n[model.peer]\nn_keys = 16\nhedas = 2\n";
  try {
    load_run_config(dir + "/bad.toml", {}, &base);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.peer.hedas"), std::string::npos) << e.what();
  }
  try {
    load_run_config(dir + "/peer.toml", {"model.peer.top_k=40"}, &base);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_k = 40"), std::string::npos) << e.what();
  }
}

TEST(Cli, CorruptCheckpointAndUnknownKeyExitNonZeroWithOneLine) {
  const RunConfig c = trained_tiny_run("cli", 2);
  const std::string dir = std::filesystem::path(c.train.out).parent_path().string();
  std::string err;
  ASSERT_EQ(run_cli("inspect --ckpt " + c.train.out, &err), 0) << err;
  // Routing report: text, the SVG chart, and compare's markdown row.
  ASSERT_EQ(run_cli("inspect --routing --windows 8 --ckpt " + c.train.out, &err), 0) << err;
  EXPECT_TRUE(fs::exists(c.train.out + "/routing.svg"));
  {
    std::ifstream svg(c.train.out + "/routing.svg");
    std::stringstream ss;
    ss << svg.rdbuf();
    EXPECT_NE(ss.str().find("<svg"), std::string::npos);
  }
  ASSERT_EQ(run_cli("compare --windows 8 " + c.train.out, &err), 0) << err;
  EXPECT_NE(run_cli("inspect --routing", &err), 0);
  EXPECT_NE(err.find("--ckpt"), std::string::npos) << err;
  // Truncate the weights.
  const std::string w = latest_checkpoint(c.train.out).dir + "/model.safetensors";
  const auto size = fs::file_size(w);
  fs::resize_file(w, size / 2);
  EXPECT_NE(run_cli("inspect --ckpt " + c.train.out, &err), 0);
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  // Corrupt the config.
  std::ofstream(c.train.out + "/config.json") << "{ not json";
  EXPECT_NE(run_cli("inspect --ckpt " + c.train.out, &err), 0);
  EXPECT_NE(err.find("config.json"), std::string::npos) << err;
  // A config with an unknown key.
  std::ofstream(dir + "/bad.toml") << "[train]\nstep = 10\n";
  EXPECT_NE(run_cli("train --config " + dir + "/bad.toml", &err), 0);
  EXPECT_NE(err.find("unknown key \"train.step\""), std::string::npos) << err;
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// stdout of a CLI command as JSON (the command must print one JSON document).
nlohmann::json cli_json(const std::string& args) {
  const std::string out = ::testing::TempDir() + "/moe_cli_out." + std::to_string(::getpid()) + ".json";
  const std::string cmd = std::string(MOE_CLI) + " " + args + " > " + out;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(out);
  return nlohmann::json::parse(in);
}

// `moe bench gemm --json` reports, for fp32 and bf16, the best and the median of its samples (best >=
// median by definition) and the kernel that ran; bf16 both with runtime-size and per-shape kernels,
// "bf16" being the way in use.
// `moe train --profile`: every metrics line has the step's phases, which with "untimed" add up to the
// step; the phases cover the layers' forward and backward and the optimizer, the GEMM phases carry
// their FLOPs (the table at the end shows GFLOP/s), and the run is the same as one without a profile.
TEST(Train, ProfileTimesEveryPhaseOfTheStep) {
  const std::string dir = tmpdir("profile");
  RunConfig c = tiny_run(dir);
  c.train.steps = 4;
  c.train.out = dir + "/profiled";
  train_model(c, {.profile = true});
  c.train.out = dir + "/plain";
  train_model(c);
  auto lines = [](const std::string& path) {
    std::ifstream in(path);
    std::vector<nlohmann::json> out;
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
    return out;
  };
  const auto profiled = lines(dir + "/profiled/metrics.jsonl"), plain = lines(dir + "/plain/metrics.jsonl");
  ASSERT_EQ(profiled.size(), 4u);
  ASSERT_EQ(plain.size(), 4u);
  for (size_t i = 0; i < profiled.size(); ++i) {
    SCOPED_TRACE(i);
    const nlohmann::json& p = profiled[i]["profile_ms"];
    for (const char* phase : {"zero gradients", "batch", "fwd: rmsnorm", "fwd: attention q, k, v", "fwd: attention scores",
                              "fwd: moe router", "fwd: moe experts", "fwd: moe combine", "fwd: lm head", "fwd: cross-entropy",
                              "bwd: lm head", "bwd: moe experts", "bwd: attention scores", "bwd: attention q, k, v",
                              "gradient norm", "optimizer", "untimed"})
      EXPECT_TRUE(p.contains(phase)) << phase;
    double sum = 0.0;
    for (const auto& [name, ms] : p.items()) {
      if (name != "untimed") {
        EXPECT_GE(ms.get<double>(), 0.0) << name;
      }
      sum += ms.get<double>();
    }
    EXPECT_GE(p["untimed"].get<double>(), 0.0);
    EXPECT_NEAR(sum, profiled[i]["step_s"].get<double>() * 1e3, 1e-6 * sum + 1e-9);
    EXPECT_FALSE(plain[i].contains("profile_ms"));
    EXPECT_EQ(profiled[i]["loss"], plain[i]["loss"]);
    EXPECT_EQ(profiled[i]["grad_norm"], plain[i]["grad_norm"]);
  }
}

TEST(Profile, NestedPhasesCountTheirOwnTime) {
  PhaseTimes times;
  {
    PhaseTimer off("never");  // no sink: nothing recorded
  }
  set_profile_sink(&times);
  {
    PhaseTimer outer("outer", 10.0);
    {
      PhaseTimer inner("inner", 5.0);
      const auto t0 = clock_type::now();
      while (ms_since(t0) < 20.0) {}
    }
    profile_add("reported", 7.0, 3.0);  // a layer's own timing: a child of outer
    PhaseTimer again("inner", 5.0);
  }
  set_profile_sink(nullptr);
  ASSERT_EQ(times.phases().size(), 3u);
  const PhaseTime& outer = times.phases()[2];
  const PhaseTime& inner = times.phases()[0];
  EXPECT_EQ(inner.name, "inner");
  EXPECT_EQ(inner.calls, 2);
  EXPECT_EQ(inner.flops, 10.0);
  EXPECT_GE(inner.ms, 20.0);
  EXPECT_EQ(times.phases()[1].name, "reported");
  EXPECT_EQ(times.phases()[1].ms, 7.0);
  EXPECT_EQ(outer.name, "outer");
  EXPECT_EQ(outer.flops, 10.0);
  // outer's own time excludes inner's 20 ms and the reported 7 ms (which it did not really spend).
  EXPECT_LT(outer.ms, 5.0);
}

// `moe generate --timing` reports prefill and decode rates and the decode's memory-bandwidth bound:
// the memory's read bandwidth measured in the same run over the bytes a token reads
// (TransformerLM::decode_bytes); and its in-cache bound, the same bytes re-read from the caches.
TEST(Cli, GenerateTimingReportsTheBandwidthBound) {
  const RunConfig c = trained_tiny_run("timing", 2);
  const std::string ids = c.train.out + "/../ids.txt";
  std::ofstream(ids) << "5 7 9\n";
  std::string err;
  ASSERT_EQ(run_cli("generate --ckpt " + c.train.out + " --prompt-ids " + ids + " --max-tokens 6 --temperature 0 --timing", &err), 0)
      << err;
  EXPECT_NE(err.find("decode 6 tokens"), std::string::npos) << err;  // each generated token is fed (its experts are reported)
  const size_t at = err.find("bandwidth bound ");
  ASSERT_NE(at, std::string::npos) << err;
  EXPECT_GT(std::stod(err.substr(at + 16)), 0.0) << err;
  EXPECT_NE(err.find("MB a token"), std::string::npos) << err;
  // And the in-cache bound: a plain sum re-reading one token's bytes, for a token this small.
  const size_t cache_at = err.find("in-cache bound ");
  ASSERT_NE(cache_at, std::string::npos) << err;
  EXPECT_GT(std::stod(err.substr(cache_at + 15)), 0.0) << err;
  EXPECT_NE(err.find("one token's", cache_at), std::string::npos) << err;
  // The bytes: every weight a token reads (the tiny model: untied head, 2 of 4 experts) and the cache.
  TransformerLM m(c.model, ParamInit::for_loading);
  const double d = c.model.hidden_size, V = c.model.vocab_size;
  EXPECT_EQ(m.decode_bytes(10) - m.decode_bytes(9), 4.0 * 2 * c.model.num_hidden_layers * c.model.attention().kv_heads() *
                                                        c.model.attention().hd());
  EXPECT_EQ(m.decode_bytes(0), 4.0 * (static_cast<double>(m.num_active_params()) - V * d + d));
  // A bf16 KV cache: named in the bound's line; `moe eval --kv-cache bf16` states its cost in loss; a
  // format it does not know is a one-line error naming the option.
  ASSERT_EQ(run_cli("generate --ckpt " + c.train.out + " --prompt-ids " + ids + " --max-tokens 6 --temperature 0 --timing "
                    "--kv-cache bf16", &err), 0) << err;
  EXPECT_NE(err.find("KV cache in bf16"), std::string::npos) << err;
  const nlohmann::json fp32 = cli_json("eval --windows 4 --json --ckpt " + c.train.out);
  const nlohmann::json bf16 = cli_json("eval --windows 4 --json --kv-cache bf16 --ckpt " + c.train.out);
  EXPECT_EQ(fp32["kv_cache"], "fp32");
  EXPECT_EQ(bf16["kv_cache"], "bf16");
  EXPECT_NE(bf16["val_loss"].get<double>(), fp32["val_loss"].get<double>());
  EXPECT_NEAR(bf16["val_loss"].get<double>(), fp32["val_loss"].get<double>(), 0.01);
  EXPECT_NE(run_cli("eval --windows 4 --kv-cache fp16 --ckpt " + c.train.out, &err), 0);
  EXPECT_NE(err.find("--kv-cache"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
}

TEST(Cli, BenchGemmReportsBestMedianAndKernels) {
  const nlohmann::json b = cli_json("bench gemm --samples 3 --threads 1 --json");
  EXPECT_EQ(b["samples"].get<int>(), 3);
  for (const char* p : {"fp32", "bf16", "bf16_runtime", "bf16_per_shape"}) {
    SCOPED_TRACE(p);
    const double best = b[p]["best_gflops"].get<double>(), median = b[p]["median_gflops"].get<double>();
    EXPECT_GT(median, 0.0);
    EXPECT_GE(best, median);
    EXPECT_FALSE(b[p]["kernel"].get<std::string>().empty());
  }
  EXPECT_EQ(b["gflops"].get<double>(), b["fp32"]["best_gflops"].get<double>());
  const std::string in_use = "bf16_" + b["bf16_kernels"].get<std::string>();
  EXPECT_EQ(b["bf16"]["best_gflops"].get<double>(), b[in_use]["best_gflops"].get<double>());
}

// `moe bench attention --json` times one attention block (grouped-query here) and its fused core,
// the core's FLOPs against the fp32 peak measured in the same run.
TEST(Cli, BenchAttention) {
  const nlohmann::json b = cli_json("bench attention --batch 2 --seq-len 40 --d-model 32 --heads 4 --kv-heads 2 --reps 2 --json");
  EXPECT_EQ(b["bench"], "attention");
  EXPECT_EQ(b["head_dim"].get<int>(), 8);
  EXPECT_EQ(b["kv_heads"].get<int>(), 2);
  EXPECT_GT(b["ms"].get<double>(), 0.0);
  EXPECT_GT(b["core_fwd_ms"].get<double>(), 0.0);
  EXPECT_GT(b["core_bwd_ms"].get<double>(), 0.0);
  EXPECT_LT(b["core_fwd_ms"].get<double>() + b["core_bwd_ms"].get<double>(), b["ms"].get<double>());
  EXPECT_GT(b["core_gflops"].get<double>(), 0.0);
  EXPECT_GT(b["peak_gflops"].get<double>(), 0.0);
}

// `moe bench peer --json` times a PEER layer and splits the time into phases; `moe inspect --routing`
// of a PEER checkpoint reports its expert usage and unevenness on held-out text.
TEST(Cli, BenchPeerAndInspectPeerRouting) {
  const nlohmann::json b = cli_json("bench peer --n-keys 32 --heads 2 --top-k 4 --d-model 32 --d-key 16 --tokens 64 --reps 2 --json");
  EXPECT_EQ(b["experts"].get<int64_t>(), 1024);
  EXPECT_GT(b["ms"].get<double>(), 0.0);
  EXPECT_GT(b["retrieval_share"].get<double>(), 0.0);
  EXPECT_LT(b["retrieval_share"].get<double>(), 1.0);
  EXPECT_TRUE(b["phases_ms"].contains("topk_fwd"));
  const std::string dir = tmpdir("inspect-peer");
  RunConfig base = tiny_run(dir);
  RunConfig c = load_run_config("", {"model.ffn=peer", "model.peer.n_keys=8", "model.peer.heads=2", "model.peer.top_k=2",
                                     "model.peer.d_key=8"}, &base);
  c.train.steps = 3;
  c.train.out = dir + "/run";
  train_model(c);
  const nlohmann::json r = cli_json("inspect --routing --ckpt " + dir + "/run --windows 4 --json");
  ASSERT_EQ(r["layers"].size(), 1u);
  EXPECT_EQ(r["layers"][0]["layer"].get<int>(), 1);  // the middle block of 2
  EXPECT_EQ(r["layers"][0]["experts"].get<int>(), 64);
  EXPECT_GT(r["layers"][0]["usage"].get<double>(), 0.0);
  EXPECT_GE(r["layers"][0]["unevenness"].get<double>(), 0.0);
  EXPECT_LE(r["layers"][0]["unevenness"].get<double>(), std::log(64.0) + 1e-9);
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// `moe eval --json` and `moe inspect --json` print one JSON object with what their text says.
TEST(Cli, EvalAndInspectPrintJson) {
  const RunConfig c = trained_tiny_run("json", 2);
  const nlohmann::json e = cli_json("eval --json --windows 4 --ckpt " + c.train.out);
  EXPECT_EQ(e["step"].get<int64_t>(), 2);
  EXPECT_EQ(e["windows"].get<int>(), 4);
  EXPECT_TRUE(std::isfinite(e["val_loss"].get<double>()));
  EXPECT_NEAR(e["perplexity"].get<double>(), std::exp(e["val_loss"].get<double>()), 1e-9);
  const nlohmann::json i = cli_json("inspect --json --ckpt " + c.train.out);
  EXPECT_EQ(i["ffn"], "moe");
  EXPECT_EQ(i["moe"]["routed_experts"].get<int>(), 4);
  EXPECT_GT(i["params"].get<int64_t>(), i["active_params"].get<int64_t>());
  EXPECT_GT(i["flops_per_token"].get<double>(), 0.0);
}

}  // namespace
}  // namespace moe
