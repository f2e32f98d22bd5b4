#include "lab/sweep.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "lab/expr.h"
#include "lab/run_folder.h"
#include "model/transformer.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace moe {
namespace {

using KeyValues = std::vector<std::pair<std::string, json>>;

// {"a": {"b": 1}} as [("a.b", 1)]: dotted TOML keys and quoted "a.b" keys alike.
void flatten(const json& obj, const std::string& prefix, KeyValues& out) {
  for (const auto& [k, v] : obj.items()) {
    const std::string key = prefix.empty() ? k : prefix + "." + k;
    if (v.is_object())
      flatten(v, key, out);
    else
      out.emplace_back(key, v);
  }
}

KeyValues flat(const json& spec, const char* section) {
  KeyValues out;
  if (spec.contains(section)) flatten(spec[section], "", out);
  return out;
}

bool is_variable(const std::string& key) { return key.find('.') == std::string::npos; }

// A number from an expression as JSON: whole numbers as integers (the int keys accept them), others
// as doubles.
json number_json(double v) {
  if (std::isfinite(v) && std::fabs(v) < 9.0e15 && v == std::floor(v)) return json(static_cast<int64_t>(v));
  return json(v);
}

std::string value_text(const json& v) {
  std::string s = v.is_string() ? v.get<std::string>() : v.dump();
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '+') c = '_';
  return s.substr(0, 24);
}

std::string short_key(const std::string& key) { return key.substr(key.rfind('.') + 1); }

// The value of a config key ("model.hidden_size") of c as a number, for expressions.
std::optional<double> config_number(const json& cfg, const std::string& key) {
  const size_t dot = key.find('.');
  if (dot == std::string::npos) return std::nullopt;
  const std::string section = key.substr(0, dot), rest = key.substr(dot + 1);
  if (!cfg.contains(section) || !cfg[section].contains(rest)) return std::nullopt;
  const json& v = cfg[section][rest];
  if (v.is_boolean()) return v.get<bool>() ? 1.0 : 0.0;
  if (v.is_number()) return v.get<double>();
  return std::nullopt;
}

std::string run_dir(const std::string& out, const std::string& name) { return out + "/points/" + name; }

}  // namespace

Sweep load_sweep(const std::string& path, const std::string& out) {
  const std::string where = "sweep " + path;
  Sweep s;
  s.file = path;
  s.spec = parse_toml_document(read_file(path, "check the path of the sweep file"), where);
  static const std::set<std::string> top = {"config", "out", "description", "set", "grid", "point", "derive"};
  for (const auto& [k, v] : s.spec.items()) {
    if (!top.count(k))
      fail(where + ": unknown top-level key \"" + k + "\"; a sweep file has config, out, description, [set], [grid], [[point]] "
           "and [derive] (config keys go inside [set], [grid] or [[point]])");
    if ((k == "config" || k == "out" || k == "description") && !v.is_string()) fail(where + ": " + k + " must be a string");
    if ((k == "set" || k == "grid" || k == "derive") && !v.is_object()) fail(where + ": " + k + " must be a table [" + k + "]");
    if (k == "point" && !v.is_array()) fail(where + ": point must be a list of tables [[point]]");
  }
  s.out = !out.empty() ? out : s.spec.contains("out") ? s.spec["out"].get<std::string>() : "runs/sweeps/" + fs::path(path).stem().string();

  // The config every point starts from.
  RunConfig base;
  if (s.spec.contains("config")) {
    std::string b = s.spec["config"].get<std::string>();
    if (!fs::exists(b) && fs::exists(fs::path(path).parent_path() / b)) b = (fs::path(path).parent_path() / b).string();
    if (!fs::exists(b)) fail(where + ": config = \"" + b + "\" does not exist; give a config path relative to the current folder");
    base = load_run_config(b, {});
  }
  for (const auto& [k, v] : flat(s.spec, "set")) {
    if (k == "train.out") fail(where + ": [set] train.out: the sweep sets each point's train.out (OUT/points/NAME); use out = or --out");
    set_run_config_value(base, k, v, where + " [set]");
  }

  // The grid's axes and the explicit points, as lists of (key, value).
  const KeyValues grid = flat(s.spec, "grid");
  std::vector<KeyValues> combos;
  if (!grid.empty()) combos.emplace_back();
  for (const auto& [k, v] : grid) {
    if (!v.is_array() || v.empty())
      fail(where + ": [grid] " + k + " = " + v.dump() + ": the grid is empty there; give a non-empty list of values, e.g. [1, 2, 4]");
    std::vector<KeyValues> next;
    for (const KeyValues& c : combos)
      for (const json& x : v) {
        KeyValues n = c;
        n.emplace_back(k, x);
        next.push_back(std::move(n));
      }
    combos = std::move(next);
  }
  if (s.spec.contains("point"))
    for (const json& p : s.spec["point"]) {
      KeyValues kv;
      flatten(p, "", kv);
      if (kv.empty()) fail(where + ": a [[point]] is empty; give it the keys it sets");
      combos.push_back(std::move(kv));
    }
  if (combos.empty()) fail(where + ": the grid is empty: give [grid] lists or [[point]] tables (see sweeps/ for examples)");

  // Derived keys, and the variables they use.
  const KeyValues derive = flat(s.spec, "derive");
  std::set<std::string> derived, used;
  for (const auto& [k, v] : derive) {
    if (!v.is_string()) fail(where + ": [derive] " + k + " must be an expression in a string, e.g. \"1024 / G\"");
    if (is_variable(k)) fail(where + ": [derive] " + k + " is not a config key; derive section.key names (`moe keys`)");
    if (k == "train.out") fail(where + ": [derive] train.out: the sweep sets each point's train.out");
    derived.insert(k);
    for (const std::string& n : expr_names(v.get<std::string>())) used.insert(n);
  }
  for (const KeyValues& c : combos)
    for (const auto& [k, v] : c) {
      if (derived.count(k)) fail(where + ": " + k + " is both swept and derived; keep one");
      if (k == "train.out") fail(where + ": train.out is set by the sweep for each point (OUT/points/NAME)");
      if (is_variable(k) && !used.count(k))
        fail(where + ": \"" + k + "\" is not a config key (those are section.key, `moe keys` lists them) and no [derive] "
             "expression uses it as a variable");
    }

  const int width = combos.size() > 100 ? 3 : 2;
  for (size_t i = 0; i < combos.size(); ++i) {
    SweepPoint p;
    char idx[32];
    std::snprintf(idx, sizeof idx, "p%0*zu", width, i);
    p.name = idx;
    for (const auto& [k, v] : combos[i]) p.name += "_" + short_key(k) + "-" + value_text(v);
    const std::string pw = where + ": point " + p.name;
    p.cfg = base;
    std::map<std::string, double> vars;
    for (const auto& [k, v] : combos[i]) {
      if (is_variable(k)) {
        if (!v.is_number()) fail(pw + ": variable " + k + " = " + v.dump() + " must be a number");
        vars[k] = v.get<double>();
      } else {
        set_run_config_value(p.cfg, k, v, pw);
      }
      p.values.emplace_back(k, v);
    }
    // Derived keys in dependency order: an expression is evaluated once the derived keys it names are.
    // A name is looked up among the derived values first, so the config before any of them is set
    // serves every expression.
    const json cfg = json::parse(run_config_to_json(p.cfg));
    std::map<std::string, double> done;
    std::vector<std::pair<std::string, std::string>> todo;
    for (const auto& [k, v] : derive) todo.emplace_back(k, v.get<std::string>());
    while (!todo.empty()) {
      bool progressed = false;
      for (auto it = todo.begin(); it != todo.end();) {
        const std::vector<std::string> names = expr_names(it->second);
        const bool ready = std::all_of(names.begin(), names.end(), [&](const std::string& n) { return !derived.count(n) || done.count(n); });
        if (!ready) {
          ++it;
          continue;
        }
        double v = 0.0;
        try {
          v = eval_expr(it->second, [&](const std::string& n) -> std::optional<double> {
            if (auto d = done.find(n); d != done.end()) return d->second;
            if (auto x = vars.find(n); x != vars.end()) return x->second;
            return config_number(cfg, n);
          });
        } catch (const Error& e) {
          fail(pw + ": [derive] " + it->first + ": " + e.what());
        }
        const json jv = number_json(v);
        set_run_config_value(p.cfg, it->first, jv, pw + ": [derive] " + it->first + " = \"" + it->second + "\" gives " + jv.dump());
        done[it->first] = v;
        p.values.emplace_back(it->first, jv);
        it = todo.erase(it);
        progressed = true;
      }
      if (!progressed) fail(where + ": [derive] " + todo.front().first + " depends on itself through other derived keys");
    }
    p.cfg.train.out = run_dir(s.out, p.name);
    try {
      p.cfg.model.validate();
      p.cfg.train.validate();
    } catch (const Error& e) {
      fail(pw + ": " + e.what());
    }
    for (const auto& [k, v] : p.values)
      if (std::find(s.columns.begin(), s.columns.end(), k) == s.columns.end()) s.columns.push_back(k);
    s.points.push_back(std::move(p));
  }
  return s;
}

bool point_finished(const SweepPoint& p) {
  const std::string run = p.cfg.train.out;
  if (!fs::exists(run + "/config.json")) return false;
  const std::vector<Checkpoint> cks = list_checkpoints(run);
  return !cks.empty() && cks.back().step >= p.cfg.train.last_step();
}

ordered_json sweep_row(const SweepPoint& p) {
  const RunConfig& c = p.cfg;
  const std::vector<json> lines = read_metrics(c.train.out);
  ordered_json row;
  for (const auto& [k, v] : p.values) row[k] = v;
  row["name"] = p.name;
  const ModelConfig::ScalingShape shape = c.model.scaling_shape();
  row["experts"] = shape.experts;
  row["granularity"] = shape.granularity;
  row["active_experts"] = shape.active_experts;
  const TransformerLM m(c.model, ParamInit::for_loading);
  const int64_t emb = m.num_embedding_params();
  row["params"] = m.num_params();
  row["active_params"] = m.num_active_params();
  row["non_embedding_params"] = m.num_params() - emb;
  row["active_non_embedding_params"] = m.num_active_params() - emb;
  row["embedding_params"] = emb;
  const int64_t tokens = c.train.last_step() * static_cast<int64_t>(c.train.batch_size) * c.model.max_position_embeddings * c.train.grad_accum;
  row["flops_per_token"] = m.flops_per_token();
  row["tokens"] = tokens;
  row["train_flops"] = m.flops_per_token() * static_cast<double>(tokens);
  double wall = 0.0;
  std::vector<double> rates;
  json val = nullptr;
  for (const json& l : lines) {
    wall += l.value("step_s", 0.0);
    if (l.contains("tokens_per_s")) rates.push_back(l["tokens_per_s"].get<double>());
    if (l.contains("val_loss")) val = l["val_loss"];
  }
  std::sort(rates.begin(), rates.end());
  row["wall_clock_s"] = wall;
  row["tokens_per_s"] = rates.empty() ? 0.0 : rates[rates.size() / 2];
  row["val_loss"] = val;
  const json bal = training_means(lines, 20, {"max_mean", "cv", "dropped", "entropy"});
  for (const auto& [k, v] : bal.items()) row[k] = std::isfinite(v.get<double>()) ? json(v) : json(nullptr);
  return row;
}

void write_results(const Sweep& s, const std::vector<ordered_json>& rows) {
  std::vector<std::string> cols;
  for (const ordered_json& r : rows)
    for (const auto& [k, v] : r.items())
      if (std::find(cols.begin(), cols.end(), k) == cols.end()) cols.push_back(k);
  auto cell = [](const ordered_json& v) -> std::string {
    if (v.is_null()) return "";
    if (v.is_number_float()) {
      char b[32];
      std::snprintf(b, sizeof b, "%.10g", v.get<double>());
      return b;
    }
    std::string t = v.is_string() ? v.get<std::string>() : v.dump();
    if (t.find_first_of(",\"\n") != std::string::npos) {
      std::string q = "\"";
      for (char ch : t) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
      return q + "\"";
    }
    return t;
  };
  std::string csv, jsonl;
  for (size_t i = 0; i < cols.size(); ++i) {
    if (i) csv += ',';
    csv += cols[i];
  }
  csv += "\n";
  for (const ordered_json& r : rows) {
    for (size_t i = 0; i < cols.size(); ++i) {
      if (i) csv += ',';
      if (r.contains(cols[i])) csv += cell(r[cols[i]]);
    }
    csv += "\n";
    jsonl += r.dump() + "\n";
  }
  write_file_atomic(s.out + "/results.csv", csv);
  write_file_atomic(s.out + "/results.jsonl", jsonl);
}

namespace {

std::string last_log_line(const std::string& log) {
  std::string text;
  try {
    text = read_file(log, "");
  } catch (const Error&) {
    return "(no log)";
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  const size_t nl = text.find_last_of("\n\r");
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

// Starts `moe train` for the point in a child process whose output goes to its log; the child dies
// with the sweep (PR_SET_PDEATHSIG), so a killed sweep leaves no trainer holding a point's folder.
pid_t start_point(const SweepPoint& p, const std::string& exe, const std::string& config, const std::string& log, int threads) {
  const std::string run = p.cfg.train.out;
  std::vector<std::string> args = {exe, "train", "--config", config, "--threads", std::to_string(threads)};
  if (!list_checkpoints(run).empty())
    args.push_back("--resume");
  else if (fs::exists(run))
    args.push_back("--overwrite");  // a start that was killed before its first checkpoint
  const pid_t parent = ::getpid();
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid < 0) fail("sweep: cannot start a process for point " + p.name);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

}  // namespace

std::vector<ordered_json> run_sweep(const Sweep& s, const SweepOptions& o) {
  fs::create_directories(s.out + "/points");
  FolderLock lock(s.out, "sweep");
  // What the folder was made for: the same points with the same configs, or an error.
  json made = json::array();
  for (const SweepPoint& p : s.points) made.push_back({{"name", p.name}, {"config", json::parse(run_config_to_json(p.cfg))}});
  const std::string made_path = s.out + "/sweep.json";
  if (fs::exists(made_path)) {
    const json old = json::parse(read_file(made_path, "check the sweep folder"), nullptr, false);
    if (!old.is_object() || old.value("points", json()) != made)
      fail("sweep: " + s.out + " holds another sweep (other points or configs than " + s.file +
           " gives); give another --out, or delete that folder to start over");
  }
  write_file_atomic(made_path, json({{"file", s.file}, {"points", made}}).dump(1) + "\n");
  for (const SweepPoint& p : s.points) write_file_atomic(run_dir(s.out, p.name) + ".json", run_config_to_json(p.cfg) + "\n");

  std::string exe = o.exe;
  if (exe.empty()) exe = fs::read_symlink("/proc/self/exe").string();
  const int jobs = std::max(1, o.jobs);
  const int cores = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = std::max(1, cores / jobs);

  std::vector<std::optional<ordered_json>> rows(s.points.size());
  std::vector<size_t> pending;
  for (size_t i = 0; i < s.points.size(); ++i)
    if (point_finished(s.points[i]))
      rows[i] = sweep_row(s.points[i]);
    else
      pending.push_back(i);
  auto finished_rows = [&] {
    std::vector<ordered_json> out;
    for (const auto& r : rows)
      if (r) out.push_back(*r);
    return out;
  };
  write_results(s, finished_rows());
  std::printf("sweep: %zu points in %s: %zu finished, %zu to train (%d at a time, %d thread(s) each)\n", s.points.size(),
              s.out.c_str(), s.points.size() - pending.size(), pending.size(), jobs, threads);
  std::fflush(stdout);

  Progress progress(static_cast<int64_t>(pending.size()), 0, "sweep: points");
  std::map<pid_t, size_t> running;
  std::vector<std::string> failed;
  size_t next = 0, done = 0;
  while (next < pending.size() || !running.empty()) {
    while (next < pending.size() && running.size() < static_cast<size_t>(jobs)) {
      const SweepPoint& p = s.points[pending[next]];
      const std::string log = run_dir(s.out, p.name) + ".log";
      std::printf("%ssweep: training %s (%zu of %zu to train); log %s\n", progress.tty() && done ? "\n" : "", p.name.c_str(),
                  next + 1, pending.size(), log.c_str());
      running[start_point(p, exe, run_dir(s.out, p.name) + ".json", log, threads)] = pending[next];
      ++next;
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) fail("sweep: waiting for the point processes failed");
    const auto it = running.find(pid);
    if (it == running.end()) continue;
    const size_t i = it->second;
    running.erase(it);
    const SweepPoint& p = s.points[i];
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && point_finished(p);
    if (ok) {
      rows[i] = sweep_row(p);
      write_results(s, finished_rows());
    } else {
      failed.push_back(p.name + " (" + last_log_line(run_dir(s.out, p.name) + ".log") + ")");
    }
    char detail[160];
    std::snprintf(detail, sizeof detail, "%s %s", p.name.c_str(),
                  ok && (*rows[i])["val_loss"].is_number() ? ("val_loss " + std::to_string((*rows[i])["val_loss"].get<double>())).c_str() : "FAILED");
    progress.update(static_cast<int64_t>(done++), detail);
  }
  if (!failed.empty()) {
    std::string list;
    for (const std::string& f : failed) list += (list.empty() ? "" : "; ") + f;
    fail("sweep: " + std::to_string(failed.size()) + " of " + std::to_string(s.points.size()) + " points failed: " + list +
         "; their logs are in " + s.out + "/points/; run the sweep again to retry them");
  }
  std::printf("sweep: %zu points; results in %s/results.csv and results.jsonl\n", s.points.size(), s.out.c_str());
  return finished_rows();
}

}  // namespace moe
