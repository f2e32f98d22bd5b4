#include "lifelong/lifelong.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unistd.h>

#include "core/enum_names.h"
#include "core/error.h"
#include "core/files.h"
#include "data/corpus.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "eval/evaluate.h"
#include "lifelong/forgetting.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace moe {

using json = nlohmann::json;

ExpandSummary expand_run(const std::string& ckpt, const std::string& out, const ExpandOptions& o) {
  if (const std::string held = fs::exists(out) ? describe_run(out) : ""; !held.empty())
    fail("moe expand: " + out + " already holds a run (" + held + "); give another --out (nothing was written)");
  const RunConfig cfg = read_checkpoint_config(ckpt);
  ModelConfig grown_cfg = expanded_config(cfg.model, o);  // refuses what cannot be expanded, before any load
  TransformerLM old(cfg.model, ParamInit::for_loading);
  AdamWConfig oc;
  AdamW old_opt(old.params(), oc, old.sparse_params());
  const TrainState from = load_checkpoint(ckpt, old, &old_opt);

  FreezeMask frozen;
  std::unique_ptr<TransformerLM> model = expand_model(old, o, &frozen);
  AdamW opt(model->params(), oc, model->sparse_params());
  std::map<std::string, Tensor*> old_state;
  for (auto& [name, t] : old_opt.state()) old_state[name] = t;
  for (auto& [name, t] : opt.state()) {
    auto it = old_state.find(name);
    MOE_CHECK(it != old_state.end(), "moe expand: no optimizer state " + name + " in " + ckpt);
    *t = grow_rows_zero(*it->second, t->shape());
  }

  RunConfig c = cfg;
  c.model = grown_cfg;
  c.train.out = out;
  c.train.init_from.clear();
  c.train.distill_from.clear();
  TrainState st;
  st.step = from.step;
  st.optimizer_steps = from.optimizer_steps;
  st.frozen = frozen;
  // Written whole beside OUT, then renamed into place (OUT is empty, or holds no run: checked above).
  write_folder_atomic(out, "moe expand", [&](const std::string& tmp) {
    write_run_config(tmp, c);
    write_file_atomic(tmp + "/tokenizer.model", read_file(ckpt + "/tokenizer.model", "is " + ckpt + " a run folder?"));
    save_checkpoint(tmp, *model, &opt, st, 0, st.step);
  });
  ExpandSummary s;
  s.old_experts = cfg.model.moe_layer(0).n_experts();
  s.new_experts = grown_cfg.moe_layer(0).n_experts();
  s.old_params = old.num_params();
  s.new_params = model->num_params();
  s.frozen = frozen_param_count(frozen, model->params());
  s.step = from.step;
  return s;
}

namespace {

const std::vector<std::string> kStrategies = {"expand", "finetune", "dense-finetune", "expand-nodistill"};

bool is_moe_strategy(const std::string& s) { return s != "dense-finetune"; }
bool expands(const std::string& s) { return s == "expand" || s == "expand-nodistill"; }

std::string phase_name(size_t p, const std::string& corpus) {
  std::string c = corpus;
  for (char& ch : c)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-') ch = '_';
  std::string name = "p";
  name.append(std::to_string(p)).append("-").append(c);
  return name;
}

// The run folder of strategy s at phase p (the MoE strategies share their first phase).
std::string run_dir(const LifelongPlan& plan, const std::string& s, size_t p) {
  const std::string who = p == 0 && is_moe_strategy(s) ? "shared" : s;
  return plan.out + "/" + who + "/" + phase_name(p, plan.phases[p]);
}

// Whether the corpus can be read here (its Debian package is installed).
bool corpus_present(const std::string& name) {
  try {
    return !corpus_text(name, 1).empty();
  } catch (const Error&) {
    return false;
  }
}

// An even sample of at most about `bytes` of text, in blocks of 64 lines.
std::string even_sample(const std::string& text, size_t bytes) {
  if (text.size() <= bytes) return text;
  return line_block_sample(text, text.size() / bytes + 1);
}

// The joint tokenizer of the phases: trained on an even sample of tokenizer_mb MB of each corpus's
// training text, the samples interleaved in turns of 100 lines (sentencepiece reads the first
// 200,000 lines, so every corpus is in them). Kept in OUT/tokenizer.model with what made it.
std::string joint_tokenizer(const LifelongPlan& plan) {
  const std::string path = plan.out + "/tokenizer.model", meta = plan.out + "/tokenizer.json";
  const json want = {{"phases", plan.phases}, {"tokenizer_mb", plan.tokenizer_mb}, {"vocab_size", plan.moe_run.model.vocab_size}};
  if (fs::exists(path) && fs::exists(meta) && json::parse(read_file(meta, ""), nullptr, false) == want) return path;
  std::vector<std::vector<std::string>> lines;
  for (const std::string& corpus : plan.phases) {
    const std::string train = split_train_val(corpus_text(corpus)).first;
    const std::string sample = even_sample(train, static_cast<size_t>(plan.tokenizer_mb) << 20);
    std::vector<std::string> ls;
    size_t start = 0;
    for (size_t i = 0; i < sample.size(); ++i)
      if (sample[i] == '\n') ls.push_back(sample.substr(start, i + 1 - start)), start = i + 1;
    lines.push_back(std::move(ls));
  }
  std::string text;
  for (size_t at = 0;; at += 100) {
    bool any = false;
    for (const auto& ls : lines)
      for (size_t i = at; i < std::min(ls.size(), at + 100); ++i) text += ls[i], any = true;
    if (!any) break;
  }
  std::printf("lifelong: training the joint %d-token tokenizer on %.1f MB (%d MB of each of %zu corpora)\n",
              plan.moe_run.model.vocab_size, static_cast<double>(text.size()) / 1e6, plan.tokenizer_mb, plan.phases.size());
  std::fflush(stdout);
  fs::create_directories(plan.out);
  const std::string tmp = plan.out + "/tokenizer.tmp.model";  // trained beside and renamed: a model there is whole
  Tokenizer::train(text, plan.moe_run.model.vocab_size, tmp);
  fs::rename(tmp, path);
  write_file_atomic(meta, want.dump() + "\n");
  return path;
}

// A finished run: a checkpoint at its last step.
bool finished(const std::string& dir, int steps) {
  const std::vector<Checkpoint> all = fs::exists(dir) ? list_checkpoints(dir) : std::vector<Checkpoint>{};
  return !all.empty() && all.back().step >= steps;
}

// What lifelong.json holds: per run folder, the validation loss on each corpus.
using Evaluations = std::map<std::string, std::map<std::string, double>>;

Evaluations read_evaluations(const std::string& path) {
  Evaluations e;
  if (!fs::exists(path)) return e;
  const json j = json::parse(read_file(path, "check the folder's permissions"), nullptr, false);
  if (!j.is_object() || !j.contains("evaluations") || !j["evaluations"].is_object()) return e;  // damaged: evaluate again
  for (const auto& [run, losses] : j["evaluations"].items())
    for (const auto& [corpus, v] : losses.items())
      if (v.is_number()) e[run][corpus] = v.get<double>();
  return e;
}

}  // namespace

LifelongPlan load_lifelong(const std::string& path, const std::string& out) {
  const std::string where = "phases file " + path;
  const json spec = parse_toml_document(read_file(path, "check the path of the phases file"), where);
  static const std::set<std::string> keys = {"config", "dense_config", "out", "phases", "steps", "strategies", "add_experts",
                                             "freeze", "init", "entry_steps", "distill_weight", "tokenizer_mb", "eval_windows",
                                             "set", "description"};
  for (const auto& [k, v] : spec.items())
    if (!keys.count(k))
      fail(where + ": unknown key \"" + k + "\"; a phases file has config, dense_config, out, phases, steps, strategies, "
           "add_experts, freeze, init, entry_steps, distill_weight, tokenizer_mb, eval_windows and [set]");
  LifelongPlan p;
  p.file = path;
  auto str = [&](const char* k, const std::string& dflt) {
    if (!spec.contains(k)) return dflt;
    if (!spec[k].is_string()) fail(where + ": " + k + " must be a string");
    return spec[k].get<std::string>();
  };
  auto integer = [&](const char* k, int dflt, int lo) {
    if (!spec.contains(k)) return dflt;
    if (!spec[k].is_number_integer() || spec[k].get<int64_t>() < lo || spec[k].get<int64_t>() > (1 << 30))
      fail(where + ": " + k + " = " + spec[k].dump() + " must be a whole number >= " + std::to_string(lo));
    return spec[k].get<int>();
  };
  auto config_path = [&](const std::string& c) {
    if (!fs::exists(c) && fs::exists(fs::path(path).parent_path() / c)) return (fs::path(path).parent_path() / c).string();
    if (!fs::exists(c)) fail(where + ": \"" + c + "\" does not exist; give a config path relative to the current folder");
    return c;
  };
  p.out = !out.empty() ? out : str("out", "runs/lifelong");
  p.moe_run = load_run_config(config_path(str("config", "configs/lifelong/moe.toml")), {});
  p.dense_run = load_run_config(config_path(str("dense_config", "configs/lifelong/dense.toml")), {});
  if (spec.contains("set")) {
    if (!spec["set"].is_object()) fail(where + ": set must be a table [set]");
    for (const auto& [k, v] : spec["set"].items()) {
      if (k == "train.out" || k == "train.corpus" || k == "train.steps")
        fail(where + ": [set] " + k + ": the phases set each run's out, corpus and steps; use out, phases and steps");
      set_run_config_value(p.moe_run, k, v, where + " [set]");
      if (k.rfind("train.", 0) == 0) set_run_config_value(p.dense_run, k, v, where + " [set]");
    }
  }
  p.moe_run.model.validate();
  if (p.moe_run.model.vocab_size != p.dense_run.model.vocab_size)
    fail(where + ": the MoE config has model.vocab_size = " + std::to_string(p.moe_run.model.vocab_size) + " and the dense one " +
         std::to_string(p.dense_run.model.vocab_size) + "; the strategies share one tokenizer, so give both the same");
  if (spec.contains("phases")) {
    if (!spec["phases"].is_array() || spec["phases"].size() < 2)
      fail(where + ": phases must be a list of at least two corpora, e.g. [\"kjv\", \"c-headers\"]");
    const std::vector<std::string> known = corpus_names();
    for (const json& c : spec["phases"]) {
      if (!c.is_string()) fail(where + ": phases: " + c.dump() + " is not a corpus name");
      const std::string name = c.get<std::string>();
      if (name.rfind("file:", 0) != 0 && std::find(known.begin(), known.end(), name) == known.end()) {
        std::string list;
        for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
        fail(where + ": phase " + std::to_string(p.phases.size()) + " names corpus \"" + name + "\", which is not a corpus; choose " +
             list + " or file:PATH");
      }
      p.phases.push_back(name);
    }
  } else {
    p.phases = {"kjv", "c-headers", "fortunes"};
    if (corpus_present("pydoc")) p.phases.push_back("pydoc");
  }
  if (std::set<std::string>(p.phases.begin(), p.phases.end()).size() != p.phases.size())
    fail(where + ": phases names a corpus twice; each phase needs its own corpus");
  if (spec.contains("strategies")) {
    if (!spec["strategies"].is_array() || spec["strategies"].empty()) fail(where + ": strategies must be a non-empty list");
    for (const json& s : spec["strategies"]) {
      if (!s.is_string() || std::find(kStrategies.begin(), kStrategies.end(), s.get<std::string>()) == kStrategies.end())
        fail(where + ": strategies: " + s.dump() + " is not a strategy; choose expand, finetune, dense-finetune or expand-nodistill");
      p.strategies.push_back(s.get<std::string>());
    }
  } else {
    p.strategies = kStrategies;
  }
  p.steps = integer("steps", 300, 1);
  p.expand.add_experts = integer("add_experts", std::max(1, p.moe_run.model.moe_layer(0).num_local_experts / 2), 1);
  p.expand.entry_steps = integer("entry_steps", std::max(1, p.steps / 6), 1);
  p.tokenizer_mb = integer("tokenizer_mb", 2, 1);
  p.eval_windows = integer("eval_windows", 128, 1);
  if (spec.contains("freeze")) p.expand.freeze = parse_enum<FreezeScope>(str("freeze", ""), where + ": freeze");
  if (spec.contains("init")) p.expand.init = parse_enum<ExpertInit>(str("init", ""), where + ": init");
  if (spec.contains("distill_weight")) {
    if (!spec["distill_weight"].is_number() || spec["distill_weight"].get<double>() < 0)
      fail(where + ": distill_weight must be a number >= 0");
    p.distill_weight = spec["distill_weight"].get<float>();
  }
  bool any_moe = false;
  for (const std::string& s : p.strategies) any_moe |= is_moe_strategy(s);
  if (any_moe) expanded_config(p.moe_run.model, p.expand);  // an MoE config that can be expanded
  return p;
}

void run_lifelong(const LifelongPlan& plan) {
  fs::create_directories(plan.out);
  const FolderLock lock(plan.out, "moe lifelong");
  remove_temp_files(plan.out);
  const std::string tokenizer = joint_tokenizer(plan);
  const size_t P = plan.phases.size();
  // Each corpus encoded with the joint tokenizer; its validation shard is what every run is measured on.
  std::vector<std::string> val;
  for (const std::string& c : plan.phases)
    val.push_back(prepare_corpus(c, plan.moe_run.train.data_dir, plan.moe_run.model.vocab_size, false, 0, tokenizer) + "/val.bin");
  const std::string eval_path = plan.out + "/lifelong.json";
  Evaluations evals = read_evaluations(eval_path);
  auto save_evals = [&] {
    json j = {{"phases", plan.phases}, {"strategies", plan.strategies}, {"steps", plan.steps}, {"evaluations", json::object()}};
    for (const auto& [run, losses] : evals) j["evaluations"][run] = losses;
    write_file_atomic(eval_path, j.dump(2) + "\n");
  };

  // The runs, phase by phase: each strategy's run of phase p starts from its run of phase p − 1.
  struct Job {
    std::string strategy;
    size_t phase;
  };
  std::vector<Job> jobs;
  std::set<std::string> planned;
  for (size_t p = 0; p < P; ++p)
    for (const std::string& s : plan.strategies)
      if (planned.insert(run_dir(plan, s, p)).second) jobs.push_back({s, p});
  for (size_t ji = 0; ji < jobs.size(); ++ji) {
    const auto& [s, p] = jobs[ji];
    const std::string dir = run_dir(plan, s, p), corpus = plan.phases[p];
    RunConfig c = is_moe_strategy(s) ? plan.moe_run : plan.dense_run;
    c.train.corpus = corpus;
    c.train.steps = plan.steps;
    c.train.stop_after = 0;
    c.train.out = dir;
    c.train.tokenizer = tokenizer;
    c.train.save_every = std::max(1, plan.steps / 4);
    c.train.keep_checkpoints = 1;
    std::string what = p == 0 ? "from scratch" : "";
    if (p > 0) {
      const std::string prev = run_dir(plan, s, p - 1);
      c.train.init_from = prev;
      if (expands(s)) {
        const std::string grown = dir + "-expanded";
        if (!fs::exists(grown) || describe_run(grown).empty()) {
          const ExpandSummary e = expand_run(prev, grown, plan.expand);
          std::printf("lifelong: expanded %s to %d experts per layer (%.2fM parameters, %.2fM frozen) in %s\n", prev.c_str(),
                      e.new_experts, static_cast<double>(e.new_params) / 1e6, static_cast<double>(e.frozen) / 1e6, grown.c_str());
        }
        c.train.init_from = grown;
        if (s == "expand") c.train.distill_from = prev, c.train.distill_weight = plan.distill_weight;
      }
      c.model = read_checkpoint_config(c.train.init_from).model;
      what = "from " + c.train.init_from + (c.train.distill_from.empty() ? "" : ", distilling from " + prev);
    }
    const std::string who = p == 0 && is_moe_strategy(s) ? "the MoE strategies' first phase" : s + ", phase " + std::to_string(p);
    if (finished(dir, plan.steps)) {
      std::printf("lifelong: [%zu/%zu] %s (%s): done before\n", ji + 1, jobs.size(), who.c_str(), corpus.c_str());
    } else {
      const bool resume = fs::exists(dir) && !list_checkpoints(dir).empty();
      std::printf("lifelong: [%zu/%zu] %s (%s): %s %d steps %s\n", ji + 1, jobs.size(), who.c_str(), corpus.c_str(),
                  resume ? "resuming" : "training", plan.steps, what.c_str());
      std::fflush(stdout);
      train_model(c, {.resume = resume, .overwrite = !resume});
      evals.erase(dir);  // evaluations of an earlier run in this folder no longer hold
    }
    // Validation loss on every corpus seen so far (kept in lifelong.json: a rerun does not redo it).
    bool missing = false;
    for (size_t j = 0; j <= p; ++j) missing |= !evals[dir].count(plan.phases[j]);
    if (missing) {
      LoadedRun run = load_run(dir);
      for (size_t j = 0; j <= p; ++j) {
        if (evals[dir].count(plan.phases[j])) continue;
        const TokenShard shard(val[j]);
        evals[dir][plan.phases[j]] =
            evaluate(*run.model, shard, c.model.max_position_embeddings, plan.eval_windows, c.train.batch_size);
      }
      save_evals();
    }
    std::string line;
    for (size_t j = 0; j <= p; ++j) {
      char loss[32];
      std::snprintf(loss, sizeof loss, " %.3f", evals[dir][plan.phases[j]]);
      line += "  " + plan.phases[j] + loss;
    }
    std::printf("lifelong: %s: validation loss%s\n", who.c_str(), line.c_str());
  }

  // The matrices and their summary.
  std::vector<ForgettingMatrix> ms;
  for (const std::string& s : plan.strategies) {
    ForgettingMatrix m{s, std::vector<std::vector<double>>(P, std::vector<double>(P, NAN))};
    for (size_t p = 0; p < P; ++p)
      for (size_t j = 0; j <= p; ++j) m.loss[p][j] = evals[run_dir(plan, s, p)][plan.phases[j]];
    ms.push_back(std::move(m));
  }
  const json settings = {{"steps_per_phase", plan.steps},
                         {"expand", {{"add_experts", plan.expand.add_experts}, {"freeze", name_of(plan.expand.freeze)},
                                     {"init", name_of(plan.expand.init)}, {"entry_steps", plan.expand.entry_steps},
                                     {"distill_weight", plan.distill_weight}}}};
  const std::string md = write_forgetting(plan.out, plan.phases, ms, settings);
  std::printf("\n%s\nlifelong: results in %s/forgetting.{json,md,svg} and forgetting-lines.svg\n", md.c_str(), plan.out.c_str());
}

}  // namespace moe
