#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "core/bf16.h"
#include "core/check.h"
#include "core/error.h"
#include "core/files.h"
#include "core/gemm.h"
#include "data/corpus.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "eval/evaluate.h"
#include "model/transformer.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/grad_sync.h"
#include "train/step_profile.h"
#include "core/progress.h"

namespace fs = std::filesystem;

namespace moe {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

float lr_at(const TrainConfig& t, int64_t step) {
  if (step < t.warmup_steps) return t.lr * static_cast<float>(step + 1) / static_cast<float>(t.warmup_steps);
  const double span = static_cast<double>(std::max<int64_t>(1, t.steps - t.warmup_steps));
  const double p = std::min(1.0, static_cast<double>(step - t.warmup_steps) / span);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * p));
  return static_cast<float>(t.lr * (t.min_lr_ratio + (1.0 - t.min_lr_ratio) * cosine));
}

// Why a step is bad ("" when it is good): a non-finite loss or gradient norm, or a loss above
// spike_factor × the running mean of the good steps' losses.
std::string bad_step_reason(double loss, double gnorm, double loss_ema, float spike_factor) {
  char buf[160];
  if (!std::isfinite(loss)) return "loss is " + std::to_string(loss);
  if (!std::isfinite(gnorm)) return "gradient norm is " + std::to_string(gnorm);
  if (spike_factor > 0.f && loss_ema > 0.0 && loss > spike_factor * loss_ema) {
    std::snprintf(buf, sizeof buf, "loss %.4g is above train.spike_factor %.3g x its running mean %.4g", loss,
                  static_cast<double>(spike_factor), loss_ema);
    return buf;
  }
  return "";
}

// A token shard that holds at least one window of L + 1 tokens (the message says what to change).
void check_shard_length(const TokenShard& s, int L, const std::string& corpus) {
  if (s.size() > static_cast<size_t>(L) + 1) return;
  fail("token shard " + s.path() + " of corpus " + corpus + " has " + std::to_string(s.size()) +
       " tokens, fewer than one sequence of model.max_position_embeddings + 1 = " + std::to_string(L + 1) +
       "; use a bigger corpus or set model.max_position_embeddings below " + std::to_string(s.size()));
}

// The teacher for train.distill_from must read the run's token ids as the run does: the same
// vocabulary (checked from its config before anything is written) and the same tokenizer file.
void check_teacher_config(const std::string& dir, const RunConfig& c) {
  const RunConfig tc = read_checkpoint_config(dir);
  if (tc.model.vocab_size != c.model.vocab_size)
    fail("train.distill_from: " + dir + " has a vocabulary of " + std::to_string(tc.model.vocab_size) +
         " tokens where this model has " + std::to_string(c.model.vocab_size) +
         "; distil from a model trained with the same tokenizer (train.tokenizer)");
  if (tc.model.max_position_embeddings < c.model.max_position_embeddings)
    fail("train.distill_from: " + dir + " takes sequences of " + std::to_string(tc.model.max_position_embeddings) +
         " tokens, fewer than this run's model.max_position_embeddings = " + std::to_string(c.model.max_position_embeddings));
}

// The teacher itself: its newest checkpoint, once its tokenizer is known to be the run's.
LoadedRun load_teacher(const std::string& dir, const std::string& tokenizer) {
  if (read_file(dir + "/tokenizer.model", "is " + dir + " a run folder?") != read_file(tokenizer, "prepare the corpus again"))
    fail("train.distill_from: " + dir + "/tokenizer.model is another tokenizer than this run's (" + tokenizer +
         "); its token ids mean other text, so distil from a model trained with the same tokenizer (train.tokenizer)");
  return load_run(dir);
}

// The "dist" object of a step's metrics line, gathered from every rank (collective): per rank in rank
// order the bytes it sent and received, its step time, its seconds in communication and their share
// of its step, the part of those that summed the gradients (grad; the rest is the experts' exchange
// and the small collectives of the forward and backward: counts, batch sums, capacity), and the
// tokens it trained.
nlohmann::json dist_metrics(Comm& comm, const CommStats& d, const CommStats& grad, double step_s, int64_t tokens) {
  constexpr int kN = 7;
  const double mine[kN] = {static_cast<double>(d.bytes_sent), static_cast<double>(d.bytes_received), step_s, d.seconds,
                           static_cast<double>(grad.bytes_sent), grad.seconds, static_cast<double>(tokens)};
  std::vector<double> all(kN * static_cast<size_t>(comm.size()));
  comm.allgather(mine, sizeof mine, all.data());
  nlohmann::json j = {{"ranks", comm.size()}};
  const char* keys[kN] = {"bytes_sent", "bytes_received", "step_s", "comm_s", "grad_bytes_sent", "grad_s", "tokens"};
  for (int q = 0; q < kN; ++q) {
    std::vector<double> v;
    for (int r = 0; r < comm.size(); ++r) v.push_back(all[kN * static_cast<size_t>(r) + q]);
    j[keys[q]] = v;
  }
  std::vector<double> share;  // each rank's against its own step: ranks start a step at different times
  for (int r = 0; r < comm.size(); ++r) {
    const double* a = all.data() + kN * static_cast<size_t>(r);
    share.push_back(a[2] > 0 ? a[3] / a[2] : 0.0);
  }
  j["comm_share"] = share;
  return j;
}

// The job fits the config (train.expert_parallel is its number of ranks) and every rank has the
// same config: rank 0's is sent to all, and a rank whose differs names the first key that does.
void check_job(const RunConfig& c, Comm* comm) {
  const int P = comm ? comm->size() : 1;
  if (c.train.expert_parallel != P) {
    if (P == 1)
      fail("train.expert_parallel = " + std::to_string(c.train.expert_parallel) + " needs that many processes: run mpirun -np " +
           std::to_string(c.train.expert_parallel) + " moe train ...; or set train.expert_parallel=1 for a single process");
    fail_job("train.expert_parallel = " + std::to_string(c.train.expert_parallel) + " but the job has " + std::to_string(P) +
             " ranks; set --set train.expert_parallel=" + std::to_string(P) + " (or mpirun -np " +
             std::to_string(c.train.expert_parallel) + ")");
  }
  if (P == 1) return;
  const std::string mine = run_config_to_json(c);
  int64_t n = static_cast<int64_t>(mine.size());
  comm->broadcast(&n, sizeof n, 0);
  std::string lead(static_cast<size_t>(n), '\0');
  if (comm->rank() == 0) lead = mine;
  comm->broadcast(lead.data(), lead.size(), 0);
  std::string why;  // this rank's difference from rank 0, if any
  if (lead != mine) {
    const nlohmann::json a = nlohmann::json::parse(lead), b = nlohmann::json::parse(mine);
    // Numbers as the config holds them (floats), not as their double's digits.
    auto text = [](const nlohmann::json& v) {
      return v.is_number_float() ? format_number(static_cast<float>(v.get<double>())) : v.dump();
    };
    for (auto& [section, keys] : a.items())
      for (auto& [key, v] : keys.items())
        if (why.empty() && (!b.contains(section) || !b[section].contains(key) || b[section][key] != v))
          why = section + "." + key + " = " + (b.contains(section) && b[section].contains(key) ? text(b[section][key]) : "(none)") +
                " on rank " + std::to_string(comm->rank()) + " but " + text(v) + " on rank 0";
    if (why.empty()) why = "rank " + std::to_string(comm->rank()) + "'s config differs from rank 0's";
  }
  // Rank 0 reports the first rank that differs, so the message reads once.
  int64_t first_bad = why.empty() ? INT64_MAX : comm->rank();
  std::vector<int64_t> all(static_cast<size_t>(P));
  comm->allgather(&first_bad, sizeof first_bad, all.data());
  const int64_t bad = *std::min_element(all.begin(), all.end());
  if (bad == INT64_MAX) return;
  int64_t len = comm->rank() == bad ? static_cast<int64_t>(why.size()) : 0;
  comm->broadcast(&len, sizeof len, static_cast<int>(bad));
  why.resize(static_cast<size_t>(len));
  comm->broadcast(why.data(), why.size(), static_cast<int>(bad));
  fail_job("the ranks of the job have different configs: " + why +
           "; give every rank the same config file and --set options (a shared file system, or the same copy on every node)");
}

}  // namespace

TrainSummary train_model(const RunConfig& given, const TrainOptions& opts) {
  // A run started from another run's checkpoint takes that run's model (a resumed one has it already).
  const RunConfig c = opts.resume ? given : with_init_model(given);
  const TrainConfig& t = c.train;
  Comm* comm = distributed(opts.comm) ? opts.comm : nullptr;  // null: a single process
  check_job(c, comm);
  const int P = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  const bool lead = rank == 0;  // writes the run folder, prints
  if (static_cast<int64_t>(t.batch_size) * c.model.max_position_embeddings > (int64_t{1} << 30))
    fail("train.batch_size × model.max_position_embeddings = " +
         std::to_string(static_cast<int64_t>(t.batch_size) * c.model.max_position_embeddings) +
         " tokens a micro-batch is above 2^30; lower train.batch_size (train.grad_accum adds micro-batches)");
  // B sequences a micro-batch in all, Bl of them on each of the P ranks.
  const int B = t.batch_size, Bl = B / P, L = c.model.max_position_embeddings, T = B * L, Tl = Bl * L;
  // Parameters, their gradients and two Adam moments, plus the activations of one micro-batch.
  c.model.check_memory(16.0, 4.0 * Tl * (24.0 * c.model.hidden_size * c.model.num_hidden_layers + 3.0 * c.model.vocab_size),
                       "train");
  if (!t.distill_from.empty()) check_teacher_config(t.distill_from, c);
  // Rank 0 holds the folder and prepares the corpus; the others wait, then read what it wrote.
  std::optional<FolderLock> lock;
  if (lead) {
    fs::create_directories(t.out);
    lock.emplace(t.out, "moe train");
    if (const int n = remove_temp_files(t.out))
      std::printf("train: removed %d unfinished file(s) of an interrupted writer in %s\n", n, t.out.c_str());
    if (opts.resume) {
      if (!fs::exists(t.out + "/config.json"))
        fail("--resume: " + t.out + " has no config.json, so it holds no run to continue; train without --resume, or set train.out to a run folder");
    } else if (const std::string held = describe_run(t.out); !held.empty() && !opts.overwrite) {
      fail(t.out + " already holds a run (" + held + "); pass --resume to continue it, --overwrite to replace it, "
           "or set another train.out");
    }
  }
  // The corpus is encoded with train.tokenizer, else with the tokenizer of the run it starts from.
  const std::string tokenizer = !t.tokenizer.empty() ? t.tokenizer : !t.init_from.empty() ? t.init_from + "/tokenizer.model" : "";
  if (comm && !lead) comm->barrier();
  const std::string data = prepare_corpus(t.corpus, t.data_dir, c.model.vocab_size, false, 0, tokenizer);
  if (comm && lead) comm->barrier();
  TokenShard train_shard(data + "/train.bin"), val_shard(data + "/val.bin");
  check_shard_length(train_shard, L, t.corpus);
  check_shard_length(val_shard, L, t.corpus);
  Tokenizer tok;
  tok.load(data + "/tokenizer.model");
  MOE_CHECK(tok.vocab_size() == c.model.vocab_size, "tokenizer of " + data + " has " + std::to_string(tok.vocab_size()) +
                                                         " tokens but model.vocab_size = " + std::to_string(c.model.vocab_size));
  if (lead && !opts.resume && opts.overwrite) clear_run(t.out);  // only once the data and sizes are known good
  TransformerLM model(c.model, opts.resume ? ParamInit::for_loading : ParamInit::random);
  model.distribute(comm);  // each rank keeps its share of the experts
  AdamWConfig oc;
  oc.beta1 = t.beta1;
  oc.beta2 = t.beta2;
  oc.weight_decay = t.weight_decay;
  AdamW opt(model.params(), oc, model.sparse_params());
  TrainState st;
  if (opts.resume) {
    st = load_checkpoint(t.out, model, &opt);
    std::printf("train: resumed %s at step %lld\n", t.out.c_str(), static_cast<long long>(st.step));
  } else if (!t.init_from.empty()) {
    // Weights, AdamW moments (and its step count) and the freeze mask; the schedule starts at 0.
    const TrainState from = load_checkpoint(t.init_from, model, &opt);
    st.optimizer_steps = from.optimizer_steps;
    st.frozen = from.frozen;
    std::printf("train: starting from %s (step %lld)%s\n", t.init_from.c_str(), static_cast<long long>(from.step),
                st.frozen.empty() ? "" : ", with its frozen parameters");
  }
  if (comm && !st.frozen.empty())
    fail_job("train.init_from: " + t.init_from + " freezes rows (a `moe expand`ed run), which expert parallelism does not "
             "train yet; train it in a single process");
  opt.set_freeze(st.frozen);
  const int64_t n_frozen = frozen_param_count(st.frozen, model.params());
  // The teacher of the distillation term: the frozen model of another run, on the same batches.
  LoadedRun teacher;
  if (!t.distill_from.empty()) teacher = load_teacher(t.distill_from, data + "/tokenizer.model");
  const int64_t start = st.step;
  if (lead) {
    write_run_config(t.out, c);
    write_file_atomic(t.out + "/tokenizer.model", read_file(data + "/tokenizer.model", "run `moe data --force`"));
  }
  // MFU's denominator: the GEMM peak of the model's own precision, measured now and again at the end
  // (the better of the two for the summary and the profile: a busy moment at the start would inflate
  // every MFU, to over 100% on a shared machine).
  const bool bf16 = c.model.precision() == Precision::bf16;
  auto measure_peak = [bf16] { return bf16 ? measure_gemm_bf16(1024, 10).best : measure_sgemm_gflops(1024, 10); };
  double peak = measure_peak();
  if (!lead && !std::freopen("/dev/null", "w", stdout)) fail("cannot redirect rank " + std::to_string(rank) + "'s output");  // rank 0 speaks for the job; errors still reach stderr
  if (P > 1)
    std::printf("train: %d ranks (mpirun -np %d): each holds 1/%d of every MoE layer's experts and %d of the %d sequences "
                "of a micro-batch; the other parameters on every rank, their gradients summed\n", P, P, P, Bl, B);
  std::printf("train: %s, %.2fM parameters (%.2fM active, %.2fM embedding), %.1f MFLOP/token, %d steps of %lld tokens, %s GEMM peak %.0f GFLOP/s, fp32 GEMMs by %s\n",
              t.out.c_str(), static_cast<double>(model.num_params()) / 1e6, static_cast<double>(model.num_active_params()) / 1e6,
              static_cast<double>(model.num_embedding_params()) / 1e6, model.flops_per_token() / 1e6, t.steps,
              static_cast<long long>(T) * t.grad_accum, bf16 ? "bf16" : "fp32", peak, fp32_gemm_name().c_str());
  if (n_frozen > 0 || teacher.model) {
    char distilling[64] = "";
    if (teacher.model) std::snprintf(distilling, sizeof distilling, ", distilling with weight %g from ", static_cast<double>(t.distill_weight));
    std::printf("train: %.2fM parameters frozen, %.2fM trained%s%s\n", static_cast<double>(n_frozen) / 1e6,
                static_cast<double>(model.num_params() - n_frozen) / 1e6, distilling, teacher.model ? t.distill_from.c_str() : "");
  }
  std::fflush(stdout);
  // Metrics: a resumed run keeps the lines of the steps before the checkpoint (rewritten atomically).
  const std::string metrics_path = t.out + "/metrics.jsonl";
  if (lead) {
    std::string kept;
    if (opts.resume && fs::exists(metrics_path)) {
      std::istringstream in(read_file(metrics_path, "check the run folder's permissions"));
      std::string line;
      while (std::getline(in, line)) {
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.is_object() && j.value("step", int64_t{-1}) < start) kept += line + "\n";
      }
    }
    write_file_atomic(metrics_path, kept);
  }
  std::ofstream metrics;
  if (lead) metrics.open(metrics_path, std::ios::app);

  std::vector<int32_t> tokens(static_cast<size_t>(Tl)), targets(static_cast<size_t>(Tl));
  std::optional<GradSync> sync;  // several ranks: the sum of the gradients
  if (comm) sync.emplace(model, *comm, t.overlap_grad_sync);
  std::vector<Param> params = model.params();
  std::vector<SparseParam> sparse = model.sparse_params();
  const int64_t end = t.last_step();
  Progress progress{end, start};
  double tok_s = 0.0, mfu = 0.0, last_val = -1.0;
  int64_t good_step = start;  // the newest weights known good: their loss was finite and no spike
  std::string last_bad;       // why the last bad step was bad
  std::vector<double> rates;
  std::string load_summary;  // the sparse FFNs' metrics of the last training step, in a few words
  // Stops the run: the checkpoints after the last good weights are set aside, the good one is kept.
  char lr_text[32];
  std::snprintf(lr_text, sizeof lr_text, "%g", static_cast<double>(t.lr));
  auto diverged = [&](int64_t step, const std::string& why) {
    const int n = lead ? quarantine_checkpoints_after(t.out, good_step) : 0;
    const std::vector<Checkpoint> left = list_checkpoints(t.out);
    fail_job("training diverged at step " + std::to_string(step + 1) + ": " + why + "; " +
         (n ? std::to_string(n) + " checkpoint(s) after it renamed *.diverged; " : std::string()) +
         (left.empty() ? "no good checkpoint was written" : "the last good checkpoint " + left.back().dir + " is kept") +
         "; lower train.lr (now " + lr_text + ") or raise train.warmup_steps");
  };
  const auto run_t0 = clock_type::now();
  std::optional<StepProfile> profile;
  if (opts.profile) profile.emplace();
  for (int64_t step = start; step < end; ++step) {
    if (profile) profile->begin_step();
    const auto t0 = clock_type::now();
    const CommStats comm0 = comm ? comm->stats : CommStats{};
    PhaseTimer zero_t("zero gradients");
    model.zero_grad();
    zero_t.stop();
    double loss = 0.0, ce = 0.0, aux = 0.0, distill = 0.0;
    for (int micro = 0; micro < t.grad_accum; ++micro) {
      const uint64_t draw = static_cast<uint64_t>(step) * static_cast<uint64_t>(t.grad_accum) + static_cast<uint64_t>(micro);
      // Rank r trains sequences [r·Bl, (r+1)·Bl) of the batch one process would draw.
      PhaseTimer batch_t("batch");
      sample_batch(train_shard, Bl, L, t.seed, draw, tokens.data(), targets.data(), rank * Bl);
      batch_t.stop();
      if (teacher.model) {  // the teacher's forward as one phase, not mixed into the student's
        PhaseTimes* sink = profile_sink();
        set_profile_sink(nullptr);
        const auto tt = clock_type::now();
        model.set_teacher(teacher.model->forward_logits(tokens.data(), Bl, L).data(), t.distill_weight);
        set_profile_sink(sink);
        profile_add("teacher forward", ms_since(tt));
      }
      ce += model.forward(tokens.data(), targets.data(), Bl, L, true, draw) / t.grad_accum;
      loss += (model.stats().ce + model.stats().aux + model.stats().distill) / t.grad_accum;
      aux += model.stats().aux / t.grad_accum;  // the whole batch's already
      distill += model.stats().distill / t.grad_accum;
      // The last micro-batch's backward starts summing each block's gradients as it finishes it.
      std::function<void(size_t)> block_done;  // GradSync's per-block start, timed as its own phase
      if (sync && micro + 1 == t.grad_accum)
        if (std::function<void(size_t)> start_block = sync->hook())
          block_done = [start_block](size_t l) {
            PhaseTimer pt("gradient sum");
            start_block(l);
          };
      model.backward(block_done);
    }
    if (comm) {  // the whole batch's gradients and mean losses on every rank
      PhaseTimer sync_t("gradient sum");
      sync->finish();
      double sums[2] = {ce, distill};
      comm->allreduce_sum(sums, 2);
      ce = sums[0] / P;
      distill = sums[1] / P;
      loss = ce + aux + distill;
    }
    PhaseTimer clip_t("gradient norm");
    if (t.grad_accum > 1) divide_grads(params, sparse, static_cast<float>(t.grad_accum));
    if (n_frozen > 0) opt.mask_frozen_grads();
    const double gnorm = grad_norm(params, sparse, comm);  // the optimizer applies the clipping
    clip_t.stop();
    const float lr = lr_at(t, step);
    const std::string bad = bad_step_reason(loss, gnorm, st.loss_ema, t.spike_factor);
    if (!bad.empty()) last_bad = bad;
    if (bad.empty()) {
      good_step = step;  // the weights this loss was measured on
      PhaseTimer opt_t("optimizer");
      opt.step(lr, clip_scale(gnorm, t.grad_clip));
      model.after_step();
      opt_t.stop();
      st.loss_ema = st.loss_ema < 0.0 ? loss : 0.9 * st.loss_ema + 0.1 * loss;
      st.bad_in_row = 0;
    } else {
      ++st.bad_in_row;
      ++st.skipped_steps;
      if (lead) std::printf("%strain: step %lld skipped (%s); %d bad in a row of train.max_bad_steps = %d\n", progress.tty() ? "\n" : "",
                  static_cast<long long>(step + 1), bad.c_str(), st.bad_in_row, t.max_bad_steps);
    }
    st.step = step + 1;
    st.optimizer_steps = opt.steps();
    const double dt = seconds_since(t0);
    const CommStats step_comm = comm ? comm->stats - comm0 : CommStats{};  // the step's own (not the metrics')
    tok_s = static_cast<double>(T) * t.grad_accum / dt;
    mfu = tok_s * model.flops_per_token() / (P * peak * 1e9);  // against the peak of every rank
    rates.push_back(tok_s);
    load_summary.clear();
    nlohmann::json j = {{"step", step}, {"loss", loss}, {"ce", ce}, {"lr", lr}, {"grad_norm", gnorm},
                        {"tokens_per_s", tok_s}, {"mfu", mfu}, {"step_s", dt}};
    if (teacher.model) j["distill"] = distill;
    if (profile) j["profile_ms"] = profile->end_step(dt * 1e3);
    j.update(model.metrics(&load_summary));
    if (comm) j["dist"] = dist_metrics(*comm, step_comm, sync->last(), dt, static_cast<int64_t>(Tl) * t.grad_accum);
    if (!bad.empty()) j["skipped"] = bad;
    const bool eval_now = (t.eval_every > 0 && (step + 1) % t.eval_every == 0) || step + 1 == end;
    if (eval_now) j["val_loss"] = last_val = evaluate(model, val_shard, L, t.eval_windows, B);
    if (lead) {
      metrics << j.dump() << "\n";
      metrics.flush();
    }
    if (st.bad_in_row >= t.max_bad_steps) diverged(step, bad);
    if (eval_now && !std::isfinite(last_val)) diverged(step, "validation loss is " + std::to_string(last_val));
    if (lead) progress.update(step, ce, tok_s);
    if (lead && eval_now && !progress.tty())
      std::printf("step %lld val_loss %.4f\n", static_cast<long long>(step + 1), last_val);
    const bool save_now = (t.save_every > 0 && (step + 1) % t.save_every == 0) || step + 1 == end;
    if (save_now && bad.empty()) {
      try {
        save_checkpoint(t.out, model, &opt, st, t.keep_checkpoints, good_step, comm);
      } catch (const NonFiniteWeights& e) {
        diverged(step, e.what());
      }
    }
  }
  if (end > start) peak = std::max(peak, measure_peak());
  if (profile && lead) {
    if (progress.tty()) std::printf("\n");
    profile->print(stdout, peak);
  }
  // A run that ends on bad steps has no good final weights: the same as diverging.
  if (st.bad_in_row > 0)
    diverged(end - 1, "the run ended on " + std::to_string(st.bad_in_row) + " bad step(s) in a row (the last: " + last_bad + ")");
  TrainSummary s;
  s.steps = end;
  s.val_loss = last_val >= 0.0 ? last_val : evaluate(model, val_shard, L, t.eval_windows, B);
  s.val_ppl = std::exp(s.val_loss);
  s.run_seconds = seconds_since(run_t0);
  if (!rates.empty()) {
    std::sort(rates.begin(), rates.end());
    s.tokens_per_s = rates[rates.size() / 2];
    s.mfu = s.tokens_per_s * model.flops_per_token() / (P * peak * 1e9);
  }
  s.load_summary = load_summary;
  int64_t none_saved = end == start && lead && list_checkpoints(t.out).empty();
  if (comm) comm->broadcast(&none_saved, sizeof none_saved, 0);
  if (none_saved) save_checkpoint(t.out, model, &opt, st, t.keep_checkpoints, start, comm);
  return s;
}

}  // namespace moe
