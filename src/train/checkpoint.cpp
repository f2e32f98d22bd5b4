#include "train/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "data/corpus.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace moe {

namespace {

using json = nlohmann::json;
constexpr const char* kModel = "model.safetensors";
constexpr const char* kOptimizer = "optimizer.safetensors";
constexpr const char* kManifest = "manifest.json";

// The step of a folder named exactly "step-<digits>", or -1.
int64_t step_of(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() == 5 || name.size() > 5 + 15) return -1;
  const std::string digits = name.substr(5);
  if (digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

// The manifest of a checkpoint folder when it is complete (every listed file there with its size);
// otherwise false, with what is wrong in *why.
bool read_manifest(const std::string& dir, json& m, std::string* why = nullptr) {
  std::error_code ec;
  auto no = [&](const std::string& w) {
    if (why) *why = w;
    return false;
  };
  if (!fs::is_regular_file(dir + "/" + kManifest, ec)) return no(dir + " has no " + kManifest);
  m = json::parse(read_file(dir + "/" + kManifest, "the checkpoint is damaged"), nullptr, false);
  if (m.is_discarded() || !m.is_object() || !m.contains("files") || !m["files"].is_object() || !m["files"].contains(kModel))
    return no(dir + "/" + kManifest + " is damaged (not the JSON moe.cpp writes)");
  for (auto& [name, size] : m["files"].items()) {
    const uintmax_t have = fs::file_size(dir + "/" + name, ec);
    if (ec) return no(dir + "/" + name + " is missing");
    if (!size.is_number_unsigned() || have != size.get<uint64_t>())
      return no(dir + "/" + name + " is truncated or damaged: " + std::to_string(have) + " bytes where its manifest says " + size.dump());
  }
  return true;
}

template <class T>
T manifest_number(const json& m, const char* key, T fallback, const std::string& where) {
  if (!m.contains(key) || m[key].is_null()) return fallback;
  if (!m[key].is_number()) fail(where + ": \"" + std::string(key) + "\" is not a number; the checkpoint is damaged");
  return m[key].get<T>();
}

// The name of the first tensor holding a NaN or an infinity, or "".
std::string first_nonfinite(const std::map<std::string, const Tensor*>& tensors) {
  for (const auto& [name, t] : tensors) {
    const float* p = t->data();
    bool ok = true;
    for (size_t i = 0, n = t->numel(); i < n; ++i) ok &= std::isfinite(p[i]);
    if (!ok) return name;
  }
  return "";
}

std::map<std::string, const Tensor*> model_tensors(TransformerLM& model) {
  std::map<std::string, const Tensor*> w;
  for (Param& p : model.params()) w[p.name] = p.value;
  for (SparseParam& p : model.sparse_params()) w[p.name] = p.value;
  for (auto& [name, b] : model.buffers()) w[name] = b;
  return w;
}

// Reads the tensors of a safetensors file straight into `into` (name → tensor), each checked by
// shape; every name of `into` must be in the file.
void load_into(const std::string& file, const std::map<std::string, const Tensor*>& into) {
  std::set<std::string> seen;
  load_safetensors_into(file, [&](const std::string& name, const std::vector<int64_t>& shape) -> Tensor* {
    auto it = into.find(name);
    if (it == into.end()) return nullptr;
    if (shape != it->second->shape())
      fail(file + ": tensor '" + name + "': shape " + shape_to_string(shape) + " where " +
           shape_to_string(it->second->shape()) + " is expected (a checkpoint of another model?)");
    seen.insert(name);
    return const_cast<Tensor*>(it->second);
  });
  for (const auto& [name, t] : into)
    if (!seen.count(name)) fail(file + " has no tensor '" + name + "' (a checkpoint of another model?)");
}

// Expert parallelism: the shard each tensor of a checkpoint is on this rank (a parameter's, and its
// AdamW moments "<name>.exp_avg", "<name>.exp_avg_sq"); unsharded tensors are not listed.
std::map<std::string, RowShard> shards_of(TransformerLM& model) {
  std::map<std::string, RowShard> out;
  for (const Param& p : model.params())
    if (p.shard.sharded())
      for (const char* suffix : {"", ".exp_avg", ".exp_avg_sq"}) out[p.name + suffix] = p.shard;
  return out;
}

// The whole tensor of a rank's rows: its shape with `total` rows.
std::vector<int64_t> whole_shape(const Tensor& part, const RowShard& s) {
  std::vector<int64_t> shape = part.shape();
  shape[0] = s.total;
  return shape;
}

// Saving with several ranks: the sharded tensors of `ts` gathered into whole ones on rank 0 (held in
// `whole`, which `ts` then points to there). Every rank calls it with the same names.
void gather_shards(Comm& comm, std::map<std::string, const Tensor*>& ts, const std::map<std::string, RowShard>& shards,
                   std::deque<Tensor>& whole) {
  for (auto& [name, t] : ts) {
    auto it = shards.find(name);
    if (it == shards.end()) continue;
    const size_t bytes = sizeof(float) * t->numel();
    float* dst = nullptr;
    if (comm.rank() == 0) dst = whole.emplace_back(whole_shape(*t, it->second)).data();
    comm.gatherv(t->data(), bytes, dst, std::vector<size_t>(static_cast<size_t>(comm.size()), bytes), 0);
    if (comm.rank() == 0) t = &whole.back();
  }
}

// Loading with several ranks: reads `file` into `ts`, the sharded tensors whole (into `whole`) and
// then each rank's rows copied out.
void load_sharded(const std::string& file, std::map<std::string, const Tensor*> ts,
                  const std::map<std::string, RowShard>& shards) {
  struct Part {
    Tensor* mine;
    const Tensor* all;
    RowShard shard;
  };
  std::deque<Tensor> whole;
  std::vector<Part> parts;
  for (auto& [name, t] : ts)
    if (auto it = shards.find(name); it != shards.end()) {
      parts.push_back({const_cast<Tensor*>(t), &whole.emplace_back(whole_shape(*t, it->second)), it->second});
      t = parts.back().all;
    }
  load_into(file, ts);
  for (const Part& p : parts) {
    const size_t row = p.mine->numel() / static_cast<size_t>(p.mine->shape()[0]);
    std::memcpy(p.mine->data(), p.all->data() + static_cast<size_t>(p.shard.first) * row, sizeof(float) * p.mine->numel());
  }
}

}  // namespace

std::string step_dir(const std::string& run, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
  return run + "/" + name;
}

std::vector<Checkpoint> list_checkpoints(const std::string& run) {
  std::vector<Checkpoint> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run, ec)) {
    const int64_t step = step_of(e.path().filename().string());
    json m;
    if (step >= 0 && e.is_directory(ec) && read_manifest(e.path().string(), m)) out.push_back({step, e.path().string()});
  }
  std::sort(out.begin(), out.end(), [](const Checkpoint& a, const Checkpoint& b) { return a.step < b.step; });
  return out;
}

Checkpoint latest_checkpoint(const std::string& run) {
  std::error_code ec;
  if (!fs::is_directory(run, ec)) fail("no run folder " + run + "; check --ckpt (the train.out of a run)");
  std::vector<Checkpoint> all = list_checkpoints(run);
  if (all.empty()) {
    if (fs::exists(run + "/" + kModel, ec))
      fail(run + " holds a checkpoint of an older moe.cpp (model.safetensors at the top); train it again");
    std::string why = "no step-N folder";  // what is wrong with the newest step folder, if any
    int64_t newest = -1;
    for (const auto& e : fs::directory_iterator(run, ec)) {
      const int64_t step = step_of(e.path().filename().string());
      json m;
      if (step <= newest) continue;
      newest = step;
      read_manifest(e.path().string(), m, &why);
    }
    fail("no complete checkpoint in " + run + " (" + why + "); train again, or check --ckpt");
  }
  return all.back();
}

void save_checkpoint(const std::string& run, TransformerLM& model, AdamW* opt, const TrainState& st, int keep,
                     int64_t protect, Comm* comm) {
  std::map<std::string, const Tensor*> w = model_tensors(model);
  std::string bad = first_nonfinite(w);
  if (distributed(comm)) {  // every rank stops, or none: a rank's experts may be the bad ones
    int64_t any = bad.empty() ? 0 : 1;
    comm->allreduce_max(&any, 1);
    if (any && bad.empty()) bad = "(on another rank)";
  }
  if (!bad.empty())
    throw NonFiniteWeights("step " + std::to_string(st.step) + ": tensor '" + bad +
                           "' holds NaN or infinite values; not saved (the earlier checkpoints are kept)");
  std::map<std::string, const Tensor*> o;
  if (opt)
    for (auto& [name, t] : opt->state()) o[name] = t;
  // Several ranks: rank 0 writes the single-process layout, every expert gathered.
  std::deque<Tensor> whole;
  if (distributed(comm)) {
    const std::map<std::string, RowShard> shards = shards_of(model);
    gather_shards(*comm, w, shards, whole);
    gather_shards(*comm, o, shards, whole);
    if (comm->rank() != 0) return;
  }
  const std::string final_dir = step_dir(run, st.step), tmp = temp_name(final_dir);
  std::error_code ec;
  if (fs::exists(final_dir, ec)) {
    json m;
    if (read_manifest(final_dir, m)) return;  // this step is already saved, complete
    // Damaged after it was written (our writes never leave one): set aside, then written anew.
    fs::remove_all(final_dir + ".damaged", ec);
    if (::rename(final_dir.c_str(), (final_dir + ".damaged").c_str()) != 0)
      fail("cannot set aside the damaged checkpoint " + final_dir + "; move it away by hand");
  }
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  try {
    json files = json::object();
    save_safetensors(tmp + "/" + kModel, w, {{"step", std::to_string(st.step)}, {"format", "moe.cpp"}});
    files[kModel] = fs::file_size(tmp + "/" + kModel);
    if (opt) {
      save_safetensors(tmp + "/" + kOptimizer, o, {{"step", std::to_string(st.step)}});
      files[kOptimizer] = fs::file_size(tmp + "/" + kOptimizer);
    }
    json m = {{"format", "moe.cpp checkpoint 1"},
              {"step", st.step},
              {"optimizer_steps", st.optimizer_steps},
              {"loss_ema", st.loss_ema},
              {"bad_in_row", st.bad_in_row},
              {"skipped_steps", st.skipped_steps},
              {"files", files}};
    if (!st.frozen.empty()) m["frozen"] = freeze_to_json(st.frozen);
    write_file_atomic(tmp + "/" + kManifest, m.dump(2) + "\n");
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) fail("cannot rename " + tmp + " to " + final_dir);
    fsync_dir(run);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  if (keep <= 0) return;
  std::vector<Checkpoint> all = list_checkpoints(run);
  int kept = 0;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (kept++ < keep || it->step == protect) continue;
    fs::remove_all(it->dir, ec);
  }
}

TrainState load_checkpoint(const std::string& run, TransformerLM& model, AdamW* opt, bool allow_nonfinite) {
  const Checkpoint ck = latest_checkpoint(run);
  json m;
  const std::string where = ck.dir + "/" + kManifest;
  if (!read_manifest(ck.dir, m)) fail(where + " changed while it was read; try again");
  const std::map<std::string, const Tensor*> w = model_tensors(model);
  const std::map<std::string, RowShard> shards = shards_of(model);  // empty in a single process
  load_sharded(ck.dir + "/" + kModel, w, shards);
  if (!allow_nonfinite)
    if (const std::string bad = first_nonfinite(w); !bad.empty())
      fail(ck.dir + "/" + kModel + ": tensor '" + bad + "' holds NaN or infinite values (a diverged run?); resume from an "
           "earlier checkpoint, or pass --allow-nonfinite to load it anyway for inspection");
  TrainState st;
  st.step = manifest_number<int64_t>(m, "step", -1, where);
  if (st.step != ck.step) fail(where + " says step " + std::to_string(st.step) + " in folder " + ck.dir + "; the checkpoint is damaged");
  st.optimizer_steps = manifest_number<int64_t>(m, "optimizer_steps", 0, where);
  st.loss_ema = manifest_number<double>(m, "loss_ema", -1.0, where);
  st.bad_in_row = manifest_number<int>(m, "bad_in_row", 0, where);
  st.skipped_steps = manifest_number<int64_t>(m, "skipped_steps", 0, where);
  if (m.contains("frozen")) {
    st.frozen = freeze_from_json(m["frozen"], where);
    if (shards.empty()) frozen_param_count(st.frozen, model.params());  // every name and range fits this model
    else fail_job(where + " freezes rows (a `moe expand`ed run), which expert parallelism does not train yet; train it in a single process");
  }
  if (opt) {
    if (!m["files"].contains(kOptimizer))
      fail(ck.dir + " has no optimizer state (written without one); it can be evaluated but not resumed");
    std::map<std::string, const Tensor*> state;
    for (auto& [name, t] : opt->state()) state[name] = t;
    load_sharded(ck.dir + "/" + kOptimizer, state, shards);
    opt->set_steps(st.optimizer_steps);
  }
  return st;
}

RunConfig read_checkpoint_config(const std::string& run) {
  const std::string path = run + "/config.json";
  return run_config_from_json(read_file(path, "is " + run + " a run folder written by `moe train`?"), path);
}

void write_run_config(const std::string& run, const RunConfig& c) {
  write_file_atomic(run + "/config.json", run_config_to_json(c) + "\n");
}

int quarantine_checkpoints_after(const std::string& run, int64_t good) {
  int n = 0;
  for (const Checkpoint& ck : list_checkpoints(run)) {
    if (ck.step <= good) continue;
    const std::string to = ck.dir + ".diverged";
    std::error_code ec;
    fs::remove_all(to, ec);
    if (::rename(ck.dir.c_str(), to.c_str()) == 0) ++n;
  }
  if (n) fsync_dir(run);
  return n;
}

std::string describe_run(const std::string& run) {
  std::error_code ec;
  const std::vector<Checkpoint> all = list_checkpoints(run);
  if (!all.empty()) return "a checkpoint at step " + std::to_string(all.back().step);
  for (const char* f : {"config.json", "metrics.jsonl", kModel})
    if (fs::exists(run + "/" + f, ec)) return std::string("a ") + f;
  return "";
}

void clear_run(const std::string& run) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run, ec)) {
    const std::string name = e.path().filename().string();
    const bool ours = name.rfind("step-", 0) == 0 || name.rfind("val-", 0) == 0 || name == "config.json" ||
                      name == "metrics.jsonl" || name == kModel || name == kOptimizer || name == "routing.svg";
    if (ours) fs::remove_all(e.path(), ec);
  }
  fsync_dir(run);
}

std::string checkpoint_val_shard(const std::string& ckpt, const RunConfig& c, const std::string& corpus) {
  const std::string dir = prepare_corpus(corpus, c.train.data_dir, c.model.vocab_size, false);
  const std::string shard = ckpt + "/val-" + fs::path(dir).filename().string() + ".bin";
  if (!fs::exists(shard)) {
    Tokenizer tok;
    tok.load(ckpt + "/tokenizer.model");
    write_token_shard(shard, tok.encode(read_file(dir + "/val.txt", "run `moe data --corpus " + corpus + " --force`")));
  }
  return shard;
}

RunConfig with_init_model(RunConfig c) {
  if (c.train.init_from.empty()) return c;
  const RunConfig from = read_checkpoint_config(c.train.init_from);
  const json mine = json::parse(run_config_to_json(c))["model"], theirs = json::parse(run_config_to_json(from))["model"],
             dflt = json::parse(run_config_to_json(RunConfig{}))["model"];
  for (auto& [key, v] : mine.items())
    if (v != dflt[key] && v != theirs[key])
      fail("train.init_from: model." + key + " = " + v.dump() + " but " + c.train.init_from + " has " + theirs[key].dump() +
           "; the model comes from the run it starts from, so drop that setting");
  c.model = from.model;
  return c;
}

LoadedRun load_run(const std::string& run, bool allow_nonfinite) {
  LoadedRun r;
  r.cfg = read_checkpoint_config(run);
  r.model = std::make_unique<TransformerLM>(r.cfg.model, ParamInit::for_loading);
  r.state = load_checkpoint(run, *r.model, nullptr, allow_nonfinite);
  return r;
}

}  // namespace moe
