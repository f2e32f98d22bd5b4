// cmd_bench.cpp — `moe bench gemm`, `moe bench moe-layer`, `moe bench attention` and `moe bench peer`:
// timings against the machine's measured GEMM peak, taken in the same run. The layer benchmarks build
// the layer they measure, so they name it (MoeLayer, Attention, PeerLayer) and read its own phase
// timings.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "core/bf16.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "core/rng.h"
#include "core/timer.h"
#include "apps/moe/common.h"
#include "moe/moe_layer.h"
#include "nn/attention.h"
#include "peer/peer_layer.h"

namespace moe::cli {
namespace {

struct LayerArgs {
  int tokens = 4096, d_model = 512, d_ff = 1024, experts = 8, top_k = 2, granularity = 1, shared = 0;
  RouterKind router = RouterKind::topk_softmax;
  Precision precision = Precision::fp32;
  float capacity_factor = 0.f;
  int reps = 7, warmup = 2, threads = 0;
  bool json = false;
};

struct AttentionArgs {
  int batch = 16, seq_len = 128, d_model = 256, heads = 4, kv_heads = 0, head_dim = 0;
  Precision precision = Precision::fp32;
  int reps = 7, warmup = 2, threads = 0;
  bool json = false;
};

struct PeerArgs {
  int n_keys = 1024, heads = 8, top_k = 16, d_model = 256, d_key = 128, tokens = 4096;
  bool no_bn = false;
  PeerScore score = PeerScore::softmax;
  PeerActivation activation = PeerActivation::gelu;
  int reps = 5, warmup = 1, threads = 0;
  bool json = false;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median of each phase of the layer over the timed repetitions.
nlohmann::json phases_json(const std::vector<MoeTimings>& v) {
  auto med = [&](double MoeTimings::*f) {
    std::vector<double> x;
    for (const MoeTimings& t : v) x.push_back(t.*f);
    return median(x);
  };
  return {{"router_fwd", med(&MoeTimings::router)},       {"dispatch_fwd", med(&MoeTimings::dispatch)},
          {"experts_fwd", med(&MoeTimings::experts)},     {"combine_fwd", med(&MoeTimings::combine)},
          {"shared_fwd", med(&MoeTimings::shared)},       {"combine_bwd", med(&MoeTimings::combine_bwd)},
          {"experts_bwd", med(&MoeTimings::experts_bwd)}, {"scatter_bwd", med(&MoeTimings::scatter_bwd)},
          {"shared_bwd", med(&MoeTimings::shared_bwd)},   {"router_bwd", med(&MoeTimings::router_bwd)}};
}

// fp32 and bf16 peaks, each the best and the median of `samples` timed multiplications, with the
// kernel that ran: a single sample swings with whatever else the machine runs. bf16 in both ways of
// getting oneDNN's kernels (core/bf16.h), the one in use first.
void run_gemm(int threads, int samples, bool json) {
  apply_threads(threads);
  const int n = 1024;
  // fp32 with both libraries (core/gemm.h), the one in use first; the peak is the better of the two.
  const Fp32Gemm f32_used = fp32_gemm();
  struct Fp32Run {
    Fp32Gemm lib;
    GemmRate rate;
    std::string kernel;
  };
  std::vector<Fp32Run> f32s;
  for (Fp32Gemm g : {f32_used, f32_used == Fp32Gemm::openblas ? Fp32Gemm::onednn : Fp32Gemm::openblas}) {
    set_fp32_gemm(g);
    f32s.push_back({g, measure_sgemm(n, samples), fp32_gemm_name()});
  }
  set_fp32_gemm(f32_used);
  const Fp32Run& peak = f32s[0].rate.best >= f32s[1].rate.best ? f32s[0] : f32s[1];
  const GemmRate f32 = peak.rate;
  const std::string f32_kernel = peak.kernel;
  const Bf16Kernels used = bf16_kernels(), other = used == Bf16Kernels::runtime ? Bf16Kernels::per_shape : Bf16Kernels::runtime;
  struct Bf16Run {
    Bf16Kernels mode;
    GemmRate rate;
    std::string kernel;
  };
  std::vector<Bf16Run> b16;
  for (Bf16Kernels m : {used, other}) {
    set_bf16_kernels(m);
    const GemmRate r = measure_gemm_bf16(n, samples);
    b16.push_back({m, r, std::string("oneDNN ") + bf16_gemm_impl()});
  }
  set_bf16_kernels(used);
  if (json) {
    auto rate = [](const GemmRate& g, const std::string& kernel) {
      return nlohmann::json{{"best_gflops", g.best}, {"median_gflops", g.median}, {"kernel", kernel}};
    };
    nlohmann::json j = {{"bench", "gemm"},          {"n", n},
                        {"samples", samples},       {"threads", num_threads()},
                        {"gflops", f32.best},       {"blas_core", blas_core_name()},
                        {"fp32", rate(f32, f32_kernel)}, {"bf16", rate(b16[0].rate, b16[0].kernel)},
                        {"fp32_gemm", name_of(f32_used)}, {"bf16_kernels", name_of(used)}};
    for (const Fp32Run& r : f32s) j[std::string("fp32_") + name_of(r.lib)] = rate(r.rate, r.kernel);
    for (const Bf16Run& r : b16) j[std::string("bf16_") + name_of(r.mode)] = rate(r.rate, r.kernel);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%d^3 on %d threads, %d samples after a warm-up (best / median GFLOP/s):\n", n, num_threads(), samples);
    for (const Fp32Run& r : f32s)
      std::printf("  fp32 %7.1f / %7.1f  %s%s\n", r.rate.best, r.rate.median, r.kernel.c_str(),
                  r.lib == f32_used ? " (in use)" : "");
    for (const Bf16Run& r : b16)
      std::printf("  bf16 %7.1f / %7.1f  %s (%s kernels%s)\n", r.rate.best, r.rate.median, r.kernel.c_str(),
                  name_of(r.mode), r.mode == used ? ", in use" : "");
  }
}

void run_layer(const LayerArgs& a) {
  apply_threads(a.threads);
  MoeConfig c;
  c.hidden_size = a.d_model;
  c.moe_intermediate_size = a.d_ff;
  c.num_local_experts = a.experts;
  c.num_experts_per_tok = a.top_k;
  c.granularity = a.granularity;
  c.router = a.router;
  c.n_shared_experts = a.shared;
  c.capacity_factor = a.capacity_factor;
  c.precision = a.precision;
  if (c.router == RouterKind::softmax_topk) c.router_aux_loss_coef = 1e-2f;
  MoeLayer layer(c);
  const int T = a.tokens, d = a.d_model;
  Tensor x({T, d}), y({T, d}), dy({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 7, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 7, 2, 0.f, 1.f);

  // The layer's efficiency is against the peak of its own precision, measured in this run.
  const bool bf16 = a.precision == Precision::bf16;
  const Fp32Peak f32_peak = bf16 ? Fp32Peak{} : measure_fp32_peak(1024, 10);
  const double peak = bf16 ? measure_gemm_bf16(1024, 10).best : f32_peak.gflops;
  const std::string peak_kernel = bf16 ? std::string("oneDNN ") + bf16_gemm_impl() : f32_peak.kernel;
  std::vector<double> total, router, dispatch, combine, experts, shared;
  std::vector<MoeTimings> phases;
  for (int r = 0; r < a.warmup + a.reps; ++r) {
    layer.zero_grad();
    auto t0 = std::chrono::steady_clock::now();
    layer.forward(x.data(), T, y.data(), {.training = true, .step = static_cast<uint64_t>(r)});
    layer.backward(dy.data(), dx.data());
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (r < a.warmup) continue;
    const MoeTimings& tm = layer.timings();
    phases.push_back(tm);
    total.push_back(ms);
    router.push_back(tm.router + tm.router_bwd);
    dispatch.push_back(tm.dispatch + tm.scatter_bwd);
    combine.push_back(tm.combine + tm.combine_bwd);
    experts.push_back(tm.experts + tm.experts_bwd);
    shared.push_back(tm.shared + tm.shared_bwd);
  }
  const double ms = median(total);
  const double h = static_cast<double>(c.expert_hidden());
  // Expert FLOPs: 3 GEMMs × 2·T·k·d·h forward, ×3 for forward + backward.
  const double flops = 9.0 * 2.0 * T * c.k() * d * h;
  const double gflops = flops / (ms * 1e-3) / 1e9;
  const double overhead = median(router) + median(dispatch) + median(combine);
  nlohmann::json j = {
      {"bench", "moe-layer"}, {"tokens", T}, {"d_model", d}, {"d_ff", a.d_ff}, {"experts", a.experts},
      {"top_k", a.top_k}, {"granularity", a.granularity}, {"routed_experts", c.n_experts()},
      {"active_experts", c.k()}, {"expert_hidden", c.expert_hidden()}, {"shared", a.shared},
      {"router", name_of(a.router)}, {"precision", name_of(a.precision)}, {"threads", num_threads()}, {"blas_core", blas_core_name()}, {"fp32_gemm", fp32_gemm_name()},
      {"ms", ms}, {"gflops", gflops}, {"peak_gflops", peak}, {"peak_precision", bf16 ? "bf16" : "fp32"},
      {"peak_kernel", peak_kernel}, {"efficiency", gflops / peak},
      {"breakdown_ms", {{"router", median(router)}, {"dispatch", median(dispatch)}, {"combine", median(combine)},
                        {"experts", median(experts)}, {"shared", median(shared)}}},
      {"overhead_fraction", overhead / ms},
      {"phases_ms", phases_json(phases)},
      {"dropped_fraction", layer.plan().dropped_fraction()}};
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("MoE layer T=%d d=%d d_ff=%d E=%d k=%d G=%d (%d experts of width %d, %d active), router %s, %s, %d threads\n",
              T, d, a.d_ff, a.experts, a.top_k, a.granularity, c.n_experts(), c.expert_hidden(), c.k(),
              name_of(a.router), name_of(a.precision), num_threads());
  std::printf("  forward+backward median %.2f ms  expert work %.1f GFLOP/s  %s peak %.1f (%s)  efficiency %.2f\n", ms,
              gflops, bf16 ? "bf16" : "fp32", peak, peak_kernel.c_str(), gflops / peak);
  std::printf("  router %.2f ms  dispatch %.2f ms  combine %.2f ms  experts %.2f ms  shared %.2f ms  (router+dispatch+combine %.1f%%)\n",
              median(router), median(dispatch), median(combine), median(experts), median(shared), 100.0 * overhead / ms);
}

// One causal self-attention block (the default model's shape), forward and backward: the whole module
// and its fused core (scores, softmax, products with the values: nn/attention_core.h), the core's
// GFLOP/s against the fp32 peak (the core is fp32 in either precision), from the module's own phases.
void run_attention(const AttentionArgs& a) {
  apply_threads(a.threads);
  AttentionConfig c;
  c.hidden_size = a.d_model;
  c.num_attention_heads = a.heads;
  c.num_key_value_heads = a.kv_heads;
  c.head_dim = a.head_dim;
  c.bf16 = a.precision == Precision::bf16;
  Attention attn(c, 7, 0, 0.02f);
  const int B = a.batch, L = a.seq_len, T = B * L, d = a.d_model;
  Tensor x({T, d}), y({T, d}), dy({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 7, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 7, 2, 0.f, 1.f);
  const Fp32Peak f32_peak = measure_fp32_peak(1024, 10);
  const double peak = f32_peak.gflops;
  PhaseTimes sink;
  set_profile_sink(&sink);
  std::vector<double> total, core_fwd, core_bwd;
  for (int r = 0; r < a.warmup + a.reps; ++r) {
    sink.clear();
    auto t0 = std::chrono::steady_clock::now();
    attn.forward(x.data(), B, L, y.data());
    attn.backward(dy.data(), dx.data());
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (r < a.warmup) continue;
    total.push_back(ms);
    for (const PhaseTime& p : sink.phases()) {
      if (p.name == "fwd: attention scores") core_fwd.push_back(p.ms);
      if (p.name == "bwd: attention scores") core_bwd.push_back(p.ms);
    }
  }
  set_profile_sink(nullptr);
  const double ms = median(total), fwd = median(core_fwd), bwd = median(core_bwd);
  const double flops = attn.core_flops(B, L);  // forward; the backward does 2.5 times as many
  const double gflops = 3.5 * flops / ((fwd + bwd) * 1e-3) / 1e9;
  nlohmann::json j = {{"bench", "attention"}, {"batch", B}, {"seq_len", L}, {"d_model", d}, {"heads", a.heads},
                      {"kv_heads", c.kv_heads()}, {"head_dim", c.hd()}, {"precision", name_of(a.precision)},
                      {"threads", num_threads()}, {"ms", ms}, {"core_fwd_ms", fwd}, {"core_bwd_ms", bwd},
                      {"core_gflops", gflops}, {"peak_gflops", peak}, {"peak_kernel", f32_peak.kernel},
                      {"core_efficiency", gflops / peak}};
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("attention B=%d L=%d d=%d heads %d (kv %d) of width %d, projections %s, %d threads\n", B, L, d, a.heads,
              c.kv_heads(), c.hd(), name_of(a.precision), num_threads());
  std::printf("  forward+backward median %.2f ms; core (scores, softmax, values) %.2f + %.2f ms, %.1f GFLOP/s, "
              "%.2f of the fp32 peak %.1f (%s)\n",
              ms, fwd, bwd, gflops, gflops / peak, peak, f32_peak.kernel.c_str());
}

void run_peer(const PeerArgs& a) {
  apply_threads(a.threads);
  PeerConfig c;
  c.hidden_size = a.d_model;
  c.n_keys = a.n_keys;
  c.heads = a.heads;
  c.top_k = a.top_k;
  c.d_key = a.d_key;
  c.query_bn = !a.no_bn;
  c.score = a.score;
  c.activation = a.activation;
  const double peak = measure_sgemm_gflops(1024, 5);
  PeerLayer layer(c);
  const int T = a.tokens, d = a.d_model;
  Tensor x({T, d}), dy({T, d}), y({T, d}), dx({T, d});
  fill_normal(x.data(), x.numel(), 3, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.numel(), 3, 2, 0.f, 1.f);
  std::vector<double> total, fwd, retrieval;
  std::vector<PeerTimings> phases;
  size_t rows_u = 0;
  for (int r = 0; r < a.warmup + a.reps; ++r) {
    layer.zero_grad();
    const auto t0 = clock_type::now();
    layer.forward(x.data(), T, y.data(), {.training = true});
    const double f = ms_since(t0);
    layer.backward(dy.data(), dx.data());
    const double ms = ms_since(t0);
    if (r < a.warmup) continue;
    total.push_back(ms);
    fwd.push_back(f);
    retrieval.push_back(layer.timings().retrieval());
    phases.push_back(layer.timings());
    rows_u = layer.du.rows.size();
  }
  auto med = [&](double PeerTimings::*f) {
    std::vector<double> v;
    for (const PeerTimings& t : phases) v.push_back(t.*f);
    return median(v);
  };
  const double ms = median(total), share = median(retrieval) / ms;
  const double state_gib = static_cast<double>(layer.num_params()) * 4.0 / (1 << 30);
  nlohmann::json j = {
      {"bench", "peer"}, {"n_keys", a.n_keys}, {"experts", c.n_experts()}, {"heads", a.heads}, {"top_k", a.top_k},
      {"d_model", d}, {"d_key", a.d_key}, {"tokens", T}, {"query_bn", c.query_bn}, {"threads", num_threads()},
      {"ms", ms}, {"forward_ms", median(fwd)}, {"us_per_token", 1e3 * ms / T}, {"retrieval_share", share},
      {"phases_ms", {{"query_fwd", med(&PeerTimings::query)}, {"scores_fwd", med(&PeerTimings::scores)},
                     {"topk_fwd", med(&PeerTimings::topk)}, {"experts_fwd", med(&PeerTimings::experts)},
                     {"experts_bwd", med(&PeerTimings::experts_bwd)}, {"rows_bwd", med(&PeerTimings::rows_bwd)},
                     {"keys_bwd", med(&PeerTimings::keys_bwd)}, {"query_bwd", med(&PeerTimings::query_bwd)}}},
      {"flops_per_token", layer.flops_per_token()}, {"gflops", layer.flops_per_token() * T / (ms * 1e6)},
      {"sgemm_peak_gflops", peak}, {"rows_touched_u", rows_u}, {"params_gib", state_gib}};
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("peer layer: N = %d² = %lld experts, h = %d, k = %d, d = %d, d_key = %d, T = %d, %d threads\n", a.n_keys,
              static_cast<long long>(c.n_experts()), a.heads, a.top_k, d, a.d_key, T, num_threads());
  std::printf("  forward+backward median %.2f ms (%.2f us/token), forward %.2f ms, retrieval %.0f%% of the time\n", ms,
              1e3 * ms / T, median(fwd), 100.0 * share);
  std::printf("  phases (ms): query %.2f  scores %.2f  top-k %.2f  experts %.2f | experts bwd %.2f  rows bwd %.2f  keys bwd %.2f  query bwd %.2f\n",
              med(&PeerTimings::query), med(&PeerTimings::scores), med(&PeerTimings::topk), med(&PeerTimings::experts),
              med(&PeerTimings::experts_bwd), med(&PeerTimings::rows_bwd), med(&PeerTimings::keys_bwd), med(&PeerTimings::query_bwd));
  std::printf("  %.2f GFLOP/s of %.0f peak sgemm; %zu expert rows touched; parameters %.2f GiB\n", j["gflops"].get<double>(), peak,
              rows_u, state_gib);
}

// The options every layer benchmark takes: timed and untimed repetitions, threads, JSON output.
void add_repetitions(CLI::App* cmd, int& reps, int& warmup, int& threads, bool& json) {
  cmd->add_option("--reps", reps, "Timed repetitions (median reported)")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", warmup, "Untimed repetitions first")->check(CLI::NonNegativeNumber);
  add_threads(cmd, threads);
  cmd->add_flag("--json", json, "Print one JSON line");
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Measure kernels and layers against the machine's sgemm peak");
  bench->require_subcommand(1);

  auto* gemm = bench->add_subcommand("gemm", "fp32 and bf16 1024×1024×1024 GFLOP/s, best and median, and the kernels that ran "
                                             "(the peaks other benchmarks compare to)");
  static bool gemm_json = false;
  static int gemm_threads = 0, gemm_samples = 10;
  gemm->add_flag("--json", gemm_json, "Print one JSON line");
  gemm->add_option("--samples", gemm_samples, "Timed multiplications per precision (after one warm-up)")
      ->check(CLI::Range(1, 1000));
  add_threads(gemm, gemm_threads);
  gemm->callback([] { run_gemm(gemm_threads, gemm_samples, gemm_json); });

  static LayerArgs la;
  auto* layer = bench->add_subcommand("moe-layer", "Forward+backward of one MoE layer; expert GFLOP/s and the time breakdown");
  layer->add_option("--tokens", la.tokens, "Tokens T in the batch")->check(CLI::PositiveNumber);
  layer->add_option("--d-model", la.d_model, "Model width d")->check(CLI::PositiveNumber);
  layer->add_option("--d-ff", la.d_ff, "Expert hidden width at granularity 1")->check(CLI::PositiveNumber);
  layer->add_option("--experts", la.experts, "Experts E at granularity 1")->check(CLI::PositiveNumber);
  layer->add_option("--top-k", la.top_k, "Experts per token k at granularity 1")->check(CLI::PositiveNumber);
  layer->add_option("--granularity", la.granularity, "Granularity G (E·G experts of width d_ff/G, k·G active)")->check(CLI::PositiveNumber);
  add_enum_option(layer, "--router", la.router, "Router");
  add_enum_option(layer, "--precision", la.precision, "Expert GEMM arithmetic (bf16: bf16 inputs, fp32 accumulation)");
  layer->add_option("--shared", la.shared, "Shared experts S")->check(CLI::NonNegativeNumber);
  layer->add_option("--capacity-factor", la.capacity_factor, "Capacity factor (<= 0: dropless)");
  add_repetitions(layer, la.reps, la.warmup, la.threads, la.json);
  layer->callback([] { run_layer(la); });
  static AttentionArgs aa;
  auto* att = bench->add_subcommand("attention", "Forward+backward of one causal self-attention block; its fused core's GFLOP/s");
  att->add_option("--batch", aa.batch, "Sequences B")->check(CLI::PositiveNumber);
  att->add_option("--seq-len", aa.seq_len, "Positions L per sequence")->check(CLI::PositiveNumber);
  att->add_option("--d-model", aa.d_model, "Model width d")->check(CLI::PositiveNumber);
  att->add_option("--heads", aa.heads, "Query heads H")->check(CLI::PositiveNumber);
  att->add_option("--kv-heads", aa.kv_heads, "Key/value heads (0: H; must divide H)")->check(CLI::NonNegativeNumber);
  att->add_option("--head-dim", aa.head_dim, "Head width (0: d / H)")->check(CLI::NonNegativeNumber);
  add_enum_option(att, "--precision", aa.precision, "The projections' GEMMs (bf16: bf16 inputs, fp32 accumulation); the core is fp32");
  add_repetitions(att, aa.reps, aa.warmup, aa.threads, aa.json);
  att->callback([] { run_attention(aa); });
  static PeerArgs pa;
  auto* peer = bench->add_subcommand("peer", "Forward+backward of one PEER layer (training mode): time, share in retrieval, phases");
  peer->add_option("--n-keys", pa.n_keys, "Sub-keys per half; N = n_keys² experts")->check(CLI::PositiveNumber);
  peer->add_option("--heads", pa.heads, "Retrieval heads h")->check(CLI::PositiveNumber);
  peer->add_option("--top-k", pa.top_k, "Experts per head k")->check(CLI::PositiveNumber);
  peer->add_option("--d-model", pa.d_model, "Model width d")->check(CLI::PositiveNumber);
  peer->add_option("--d-key", pa.d_key, "Query width d_key (even)")->check(CLI::PositiveNumber);
  peer->add_option("--tokens", pa.tokens, "Tokens per batch T")->check(CLI::PositiveNumber);
  peer->add_flag("--no-bn", pa.no_bn, "No BatchNorm on the queries");
  add_enum_option(peer, "--score", pa.score, "Gate over a head's k scores");
  add_enum_option(peer, "--activation", pa.activation, "Expert activation");
  add_repetitions(peer, pa.reps, pa.warmup, pa.threads, pa.json);
  peer->callback([] { run_peer(pa); });
}

}  // namespace moe::cli
