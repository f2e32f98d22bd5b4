// micro_moe — Google Benchmark timings of the MoE layer's pieces: sgemm (the peak the layer is
// compared to), bf16 GEMM, router selection, dispatch plan, gather, and the whole layer; causal
// attention at the main job's shape; PEER's product-key top-k and the PEER layer; decoding's
// matrix-vector products from packed weights.
//   build/bin/micro_moe --benchmark_filter=Router
#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

#include "core/bf16.h"
#include "core/gemm.h"
#include "core/packed.h"
#include "core/rng.h"
#include "moe/moe_layer.h"
#include "nn/attention.h"
#include "peer/peer_layer.h"
#include "peer/peer_stats.h"
#include "peer/product_keys.h"

namespace moe {
namespace {

void BM_Sgemm(benchmark::State& st) {
  const int n = static_cast<int>(st.range(0));
  std::vector<float> a(static_cast<size_t>(n) * n), b(a.size()), c(a.size());
  fill_uniform(a.data(), a.size(), 1, 1, -1.f, 1.f);
  fill_uniform(b.data(), b.size(), 1, 2, -1.f, 1.f);
  for (auto _ : st) sgemm(false, true, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Sgemm)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_GemmBf16(benchmark::State& st) {
  const int n = static_cast<int>(st.range(0));
  std::vector<float> a(static_cast<size_t>(n) * n), c(a.size());
  fill_uniform(a.data(), a.size(), 1, 1, -1.f, 1.f);
  std::vector<bf16_t> ab(a.size());
  to_bf16(a.data(), ab.data(), a.size());
  for (auto _ : st) gemm_bf16(false, true, n, n, n, ab.data(), n, ab.data(), n, 0.f, c.data(), n);
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_GemmBf16)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

// The expert layer's bf16 products in each layout (T = 4096, k = 2: about 1000 rows an expert), with
// either kernel choice (Bf16Kernels, core/bf16.h; per_shape runs A·Bᵀ per shape and the rest as
// runtime does): arg 0 = layout (0 A·Bᵀ, 1 A·B, 2 Aᵀ·B, 3 Aᵀ·Bᵀ), 1-3 = M, N, K, 4 = per_shape (1) or
// runtime (0). Alternate the two on a noisy machine: --benchmark_enable_random_interleaving=true
// --benchmark_repetitions=6.
void BM_GemmBf16Layout(benchmark::State& st) {
  const bool ta = st.range(0) >= 2, tb = st.range(0) % 2 == 0;
  const int M = static_cast<int>(st.range(1)), N = static_cast<int>(st.range(2)), K = static_cast<int>(st.range(3));
  const Bf16Kernels was = bf16_kernels();
  set_bf16_kernels(st.range(4) ? Bf16Kernels::per_shape : Bf16Kernels::runtime);
  std::vector<float> a(static_cast<size_t>(std::max(M, N)) * K), c(static_cast<size_t>(M) * N);
  fill_uniform(a.data(), a.size(), 1, 1, -1.f, 1.f);
  std::vector<bf16_t> ab(a.size());
  to_bf16(a.data(), ab.data(), a.size());
  const int lda = ta ? M : K, ldb = tb ? K : N;
  for (auto _ : st) gemm_bf16(ta, tb, M, N, K, ab.data(), lda, ab.data(), ldb, 0.f, c.data(), N);
  set_bf16_kernels(was);
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_GemmBf16Layout)
    ->ArgsProduct({{0}, {1000}, {2048}, {512}, {0, 1}})   // W1|W3 forward: x·[W1|W3]ᵀ
    ->ArgsProduct({{1}, {1000}, {512}, {1024}, {0, 1}})   // dH·W2 (an input gradient)
    ->ArgsProduct({{2}, {512}, {2048}, {1000}, {0, 1}})   // xᵀ·d[A|B] (a weight gradient)
    ->ArgsProduct({{3}, {512}, {1024}, {1000}, {0, 1}})
    ->ArgsProduct({{0}, {1000}, {256}, {512}, {0, 1}})    // the same at G = 8 (experts of width 128)
    ->ArgsProduct({{2}, {512}, {256}, {1000}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

MoeConfig layer_config(int G, RouterKind router) {
  MoeConfig c;
  c.hidden_size = 512;
  c.moe_intermediate_size = 1024;
  c.num_local_experts = 8;
  c.num_experts_per_tok = 2;
  c.granularity = G;
  c.router = router;
  return c;
}

// Router forward in training (logits GEMM, selection, gates) for T = 4096 tokens of d = 512:
// arg 0 = granularity (8 or 64 experts), arg 1 = the router (RouterKind order). Hash routes by token
// id; base (auction) and sbase (Sinkhorn) show what balanced routing costs.
void BM_Router(benchmark::State& st) {
  const auto kind = static_cast<RouterKind>(st.range(1));
  MoeConfig c = layer_config(static_cast<int>(st.range(0)), kind);
  if (kind == RouterKind::base) {  // one expert per token, as many experts
    c.num_local_experts *= c.granularity;
    c.num_experts_per_tok = c.granularity = 1;
  }
  c.vocab_size = 4096;
  auto router = Router::create(c);
  const int T = 4096;
  std::vector<float> x(static_cast<size_t>(T) * c.hidden_size);
  fill_normal(x.data(), x.size(), 1, 1, 0.f, 1.f);
  std::vector<int32_t> tokens(static_cast<size_t>(T));
  for (int t = 0; t < T; ++t) tokens[static_cast<size_t>(t)] = (t * 7919) % c.vocab_size;
  Routing r;
  uint64_t step = 0;
  for (auto _ : st) router->forward(x.data(), T, FfnContext{.training = true, .step = step++, .tokens = tokens.data()}, r);
  st.SetItemsProcessed(st.iterations() * T);
  st.SetLabel(name_of(kind));
}
BENCHMARK(BM_Router)->ArgsProduct({{1, 8}, {0, 1, 2, 3, 4, 5, 6, 7, 8}})->Unit(benchmark::kMillisecond)->UseRealTime();

// Dispatch plan (counting sort, capacity) of a random routing: args = E, k, capacity policy.
void BM_DispatchPlan(benchmark::State& st) {
  const int T = 4096, E = static_cast<int>(st.range(0)), k = static_cast<int>(st.range(1));
  Routing r;
  r.T = T;
  r.k = k;
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < k; ++i) {
      r.expert.push_back(static_cast<int32_t>((t * 7 + i * 13 + (t >> 3)) % E));
      r.gate.push_back(rng_uniform(2, 1, static_cast<uint64_t>(t * k + i)));
    }
  const float cf = st.range(2) ? 1.0f : 0.f;
  for (auto _ : st) benchmark::DoNotOptimize(make_dispatch_plan(r, E, cf, DropPolicy::probs));
  st.SetItemsProcessed(st.iterations() * T * k);
}
BENCHMARK(BM_DispatchPlan)->Args({8, 2, 0})->Args({8, 2, 1})->Args({64, 16, 0})->Args({64, 16, 1})->Unit(benchmark::kMicrosecond);

// Causal attention of the main job's model (d = 256, 4 heads, 16 sequences of 128 tokens): arg 0 the
// forward, 1 forward + backward. GFLOP/s counts the projections and the score products computed.
void BM_Attention(benchmark::State& st) {
  AttentionConfig c;
  c.hidden_size = 256;
  c.num_attention_heads = 4;
  Attention a(c, 1, 1, 0.02f);
  const int B = 16, L = 128, T = B * L, d = c.hidden_size;
  std::vector<float> x(static_cast<size_t>(T) * d), y(x.size()), dx(x.size());
  fill_normal(x.data(), x.size(), 1, 1, 0.f, 1.f);
  for (auto _ : st) {
    a.forward(x.data(), B, L, y.data());
    if (st.range(0)) a.backward(x.data(), dx.data());
  }
  const double fwd = 2.0 * T * d * 4.0 * d + a.core_flops(B, L);
  st.counters["GFLOP/s"] = benchmark::Counter((st.range(0) ? 3.0 : 1.0) * fwd * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Attention)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

// Whole layer forward + backward at the shape: args = granularity, bf16.
void BM_MoeLayer(benchmark::State& st) {
  MoeConfig c = layer_config(static_cast<int>(st.range(0)), RouterKind::topk_softmax);
  if (st.range(1)) c.precision = Precision::bf16;
  MoeLayer layer(c);
  const int T = 4096, d = c.hidden_size;
  std::vector<float> x(static_cast<size_t>(T) * d), y(x.size()), dx(x.size());
  fill_normal(x.data(), x.size(), 1, 1, 0.f, 1.f);
  for (auto _ : st) {
    layer.forward(x.data(), T, y.data(), {});
    layer.backward(x.data(), dx.data());
  }
  const double flops = 9.0 * 2.0 * T * c.k() * d * c.expert_hidden();
  st.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MoeLayer)->Args({1, 0})->Args({8, 0})->Args({1, 1})->Args({8, 1})->Unit(benchmark::kMillisecond)->UseRealTime();


// Product-key top-16 of n_keys² experts from two half-score rows (one query of one head).
void BM_ProductKeyTopK(benchmark::State& st) {
  const int n = static_cast<int>(st.range(0)), k = 16;
  std::vector<float> s1(static_cast<size_t>(n)), s2(s1.size()), score(k);
  std::vector<int32_t> idx(k);
  fill_normal(s1.data(), s1.size(), 1, 1, 0.f, 1.f);
  fill_normal(s2.data(), s2.size(), 1, 2, 0.f, 1.f);
  for (auto _ : st) {
    product_key_topk(s1.data(), s2.data(), n, k, idx.data(), score.data());
    benchmark::DoNotOptimize(idx.data());
  }
}
BENCHMARK(BM_ProductKeyTopK)->Arg(128)->Arg(1024)->Unit(benchmark::kMicrosecond);

// PEER layer forward+backward, d = 256, h = 8, k = 16, d_key = 128, 1024 tokens, N = n_keys².
void BM_PeerLayer(benchmark::State& st) {
  PeerConfig c;
  c.n_keys = static_cast<int>(st.range(0));
  PeerLayer layer(c);
  const int T = 1024;
  std::vector<float> x(static_cast<size_t>(T) * c.hidden_size), dy(x.size()), y(x.size()), dx(x.size());
  fill_normal(x.data(), x.size(), 1, 1, 0.f, 1.f);
  fill_normal(dy.data(), dy.size(), 1, 2, 0.f, 1.f);
  for (auto _ : st) {
    layer.zero_grad();
    layer.forward(x.data(), T, y.data(), {.training = true});
    layer.backward(dy.data(), dx.data());
  }
  st.counters["tokens/s"] = benchmark::Counter(T, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_PeerLayer)->Arg(128)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

// One row of x against a packed (rows, cols) matrix, as decoding multiplies (format: 0 fp32, 1 bf16,
// 2 q8_0): the bytes of the matrix read per second. 256 × 256 and 8192 × 256 are the default model's
// W_o and head; 4096 × 4096 a larger model's.
void BM_PackedMatvec(benchmark::State& st) {
  const int rows = static_cast<int>(st.range(0)), cols = static_cast<int>(st.range(1));
  const auto f = static_cast<WeightFormat>(st.range(2));
  std::vector<float> w(static_cast<size_t>(rows) * cols), x(static_cast<size_t>(cols)), y(static_cast<size_t>(rows));
  fill_normal(w.data(), w.size(), 1, 1, 0.f, 0.05f);
  fill_normal(x.data(), x.size(), 1, 2, 0.f, 1.f);
  PackedMatrix p;
  p.pack(w.data(), rows, cols, f);
  for (auto _ : st) {
    p.matmul(x.data(), 1, y.data(), rows);
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["GB"] = benchmark::Counter(static_cast<double>(p.bytes()) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_PackedMatvec)
    ->ArgsProduct({{256, 8192}, {256}, {0, 1, 2}})
    ->Args({4096, 4096, 0})
    ->Args({4096, 4096, 1})
    ->Args({4096, 4096, 2})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace moe

BENCHMARK_MAIN();
