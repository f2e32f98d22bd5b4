#include "moe/peer.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "core/timer.h"
#include "core/topk.h"
#include "core/vmath.h"

namespace moe {

void product_key_topk(const float* s1, const float* s2, int n_keys, int k, int32_t* idx, float* score) {
  MOE_CHECK(k >= 1 && k <= n_keys, "product keys: top_k = " + std::to_string(k) + " must be in [1, n_keys = " +
                                       std::to_string(n_keys) + "]");
  thread_local std::vector<int32_t> a, b;
  thread_local std::vector<uint64_t> best;
  a.resize(static_cast<size_t>(k));
  b.resize(static_cast<size_t>(k));
  topk_desc(s1, n_keys, k, a.data());
  topk_desc(s2, n_keys, k, b.data());
  // The top k of the k² sums by insertion against the current k-th. The halves are sorted, so along
  // a row (fixed i) the sums only fall: once one is below the k-th value the rest of the row is too,
  // and once a row's first sum is, every later row's is. Skipping them is exact.
  best.resize(static_cast<size_t>(k));
  const uint32_t nk = static_cast<uint32_t>(n_keys);
  auto key_of = [&](int i, int j, float v) {
    return order_key(v, static_cast<uint32_t>(a[static_cast<size_t>(i)]) * nk + static_cast<uint32_t>(b[static_cast<size_t>(j)]));
  };
  const float v0 = s1[a[0]];
  for (int j = 0; j < k; ++j) best[static_cast<size_t>(j)] = key_of(0, j, v0 + s2[b[static_cast<size_t>(j)]]);
  std::sort(best.begin(), best.end(), std::greater<uint64_t>());
  auto kth_value = [&] {
    const uint32_t e = key_index(best[static_cast<size_t>(k - 1)]);
    return s1[e / nk] + s2[e % nk];
  };
  float kth = kth_value();
  for (int i = 1; i < k; ++i) {
    const float v1 = s1[a[static_cast<size_t>(i)]];
    if (v1 + s2[b[0]] < kth) break;
    for (int j = 0; j < k; ++j) {
      const float v = v1 + s2[b[static_cast<size_t>(j)]];
      if (v < kth) break;
      const uint64_t key = key_of(i, j, v);
      topk_keys(&key, 1, k, best.data(), k);
      kth = kth_value();
    }
  }
  for (int i = 0; i < k; ++i) {
    const uint32_t e = key_index(best[static_cast<size_t>(i)]);
    idx[i] = static_cast<int32_t>(e);
    score[i] = s1[e / static_cast<uint32_t>(n_keys)] + s2[e % static_cast<uint32_t>(n_keys)];
  }
}

// ---- The PEER layer ---------------------------------------------------------------------------

void PeerConfig::validate() const {
  auto bad = [](const std::string& m) { fail("peer config: " + m); };
  auto pos = [&](const char* f, int v) {
    if (v <= 0) bad(std::string(f) + " = " + std::to_string(v) + " must be positive");
  };
  pos("d_model", d_model);
  pos("n_keys", n_keys);
  pos("heads", heads);
  pos("top_k", top_k);
  pos("d_key", d_key);
  if (d_key % 2 != 0) bad("d_key = " + std::to_string(d_key) + " must be even (it is split in two halves)");
  if (top_k > n_keys) bad("top_k = " + std::to_string(top_k) + " is larger than n_keys = " + std::to_string(n_keys) + "; choose top_k <= n_keys");
  if (n_experts() > (int64_t{1} << 31) - 1) bad("n_keys = " + std::to_string(n_keys) + " gives more than 2^31 experts; choose n_keys <= 46340");
  if (score != "softmax" && score != "sigmoid") bad("score = \"" + score + "\" is not known; use softmax or sigmoid");
  if (activation != "gelu" && activation != "relu") bad("activation = \"" + activation + "\" is not known; use gelu or relu");
  if (!(bn_eps > 0.f)) bad("bn_eps must be positive");
  if (!(bn_momentum >= 0.f && bn_momentum <= 1.f)) bad("bn_momentum must be in [0, 1]");
}

static const PeerConfig& validated(const PeerConfig& c) {
  c.validate();
  return c;
}

PeerLayer::PeerLayer(const PeerConfig& c, bool init_tables)
    : cfg(validated(c)),
      wq({c.heads * c.d_key, c.d_model}), dwq({c.heads * c.d_key, c.d_model}),
      bn_gamma({c.heads * c.d_key}), dbn_gamma({c.heads * c.d_key}),
      bn_beta({c.heads * c.d_key}), dbn_beta({c.heads * c.d_key}),
      running_mean({c.heads * c.d_key}), running_var({c.heads * c.d_key}),
      k1({c.n_keys, c.d_key / 2}), k2({c.n_keys, c.d_key / 2}),
      u({c.n_experts(), c.d_model}), v({c.n_experts(), c.d_model}) {
  const uint64_t s = c.layer_id * 64 + 40;
  fill_normal(wq.data(), wq.numel(), c.seed, s, 0.f, 1.f / std::sqrt(static_cast<float>(c.d_model)));
  fill_normal(k1.data(), k1.numel(), c.seed, s + 1, 0.f, 1.f / std::sqrt(static_cast<float>(c.d_key / 2)));
  fill_normal(k2.data(), k2.numel(), c.seed, s + 2, 0.f, 1.f / std::sqrt(static_cast<float>(c.d_key / 2)));
  if (init_tables) {
    fill_normal(u.data(), u.numel(), c.seed, s + 3, 0.f, c.init_std);
    fill_normal(v.data(), v.numel(), c.seed, s + 4, 0.f, c.init_std);
  }
  bn_gamma.fill(1.f);
  running_var.fill(1.f);
}

std::vector<Param> PeerLayer::dense_params() {
  std::vector<Param> out = {{"query.weight", &wq, &dwq}};
  if (cfg.query_bn) {
    out.push_back({"query_bn.weight", &bn_gamma, &dbn_gamma});
    out.push_back({"query_bn.bias", &bn_beta, &dbn_beta});
  }
  return out;
}

std::vector<SparseParam> PeerLayer::sparse_params() {
  return {{"sub_keys.0", &k1, &dk1}, {"sub_keys.1", &k2, &dk2}, {"experts.u", &u, &du}, {"experts.v", &v, &dv}};
}

std::vector<std::pair<std::string, Tensor*>> PeerLayer::buffers() {
  if (!cfg.query_bn) return {};
  return {{"query_bn.running_mean", &running_mean}, {"query_bn.running_var", &running_var}};
}

int64_t PeerConfig::num_params() const {
  const int64_t HD = static_cast<int64_t>(heads) * d_key;
  return HD * d_model + (query_bn ? 2 * HD : 0) + static_cast<int64_t>(n_keys) * d_key + 2 * n_experts() * d_model;
}

int64_t PeerLayer::num_params() const { return cfg.num_params(); }

int64_t PeerLayer::num_active_params() const {
  const int64_t HD = static_cast<int64_t>(cfg.heads) * cfg.d_key;
  return HD * cfg.d_model + (cfg.query_bn ? 2 * HD : 0) + static_cast<int64_t>(cfg.n_keys) * cfg.d_key +
         2LL * cfg.heads * cfg.top_k * cfg.d_model;
}

double PeerLayer::flops_per_token() const {
  const double d = cfg.d_model, H = cfg.heads, dk = cfg.d_key, n = cfg.n_keys, k = cfg.top_k;
  const double query = 2.0 * d * H * dk, scores = 2.0 * H * n * dk, candidates = H * k * k;
  const double key_grads = 2.0 * 2.0 * H * k * dk, experts = 2.0 * 2.0 * H * k * d;
  return 3.0 * (query + experts) + scores + candidates + key_grads;
}

void PeerLayer::zero_grad() {
  for (Param& p : dense_params()) p.grad->zero();
  for (SparseRows* s : {&dk1, &dk2, &du, &dv}) s->clear();
}

namespace {
inline float act_fwd(bool gelu, float z) { return gelu ? z * normal_cdf(z) : (z > 0.f ? z : 0.f); }
inline float act_grad(bool gelu, float z) { return gelu ? normal_cdf(z) + z * normal_pdf(z) : (z > 0.f ? 1.f : 0.f); }

// Items 0..P-1 grouped by their row: rows ascending, items ascending within a row (a stable LSD
// radix sort on the row, 11 bits a pass: work grows with the items, memory with the rows touched).
struct RowGroups {
  std::vector<int32_t> rows;     // distinct rows, ascending
  std::vector<size_t> start;     // rows.size() + 1 offsets into items
  std::vector<uint32_t> items;   // P items
};

void group_by_row(const std::vector<int32_t>& row_of, int64_t n_rows, RowGroups& g) {
  const size_t P = row_of.size();
  std::vector<uint32_t> tmp(P);
  g.items.resize(P);
  for (size_t p = 0; p < P; ++p) g.items[p] = static_cast<uint32_t>(p);
  constexpr int kBits = 11;
  std::vector<size_t> count(size_t{1} << kBits);
  for (int shift = 0; (n_rows - 1) >> shift > 0 || shift == 0; shift += kBits) {
    std::fill(count.begin(), count.end(), 0);
    const uint32_t mask = (1u << kBits) - 1;
    for (size_t p = 0; p < P; ++p) ++count[(static_cast<uint32_t>(row_of[p]) >> shift) & mask];
    size_t sum = 0;
    for (size_t& c : count) {
      const size_t c0 = c;
      c = sum;
      sum += c0;
    }
    for (size_t i = 0; i < P; ++i) {
      const uint32_t item = g.items[i];
      tmp[count[(static_cast<uint32_t>(row_of[item]) >> shift) & mask]++] = item;
    }
    g.items.swap(tmp);
  }
  g.rows.clear();
  g.start.clear();
  for (size_t i = 0; i < P; ++i)
    if (i == 0 || row_of[g.items[i]] != row_of[g.items[i - 1]]) {
      g.start.push_back(i);
      g.rows.push_back(row_of[g.items[i]]);
    }
  g.start.push_back(P);
}

// Adds the row gradients of the groups into `into` (written in place when it holds no rows yet, so a
// step reuses its memory): each row's items are summed in item order by add(item, row_gradient).
void add_rows(const RowGroups& g, int width, SparseRows& into, const std::function<void(uint32_t, float*)>& add) {
  SparseRows fresh;
  SparseRows& out = into.rows.empty() ? into : fresh;
  out.rows = g.rows;
  out.grad.resize({static_cast<int64_t>(g.rows.size()), width});
  parallel_for(g.rows.size(), [&](size_t r) {
    float* row = out.grad.data() + r * static_cast<size_t>(width);
    std::fill(row, row + width, 0.f);
    for (size_t i = g.start[r]; i < g.start[r + 1]; ++i) add(g.items[i], row);
  }, 16);
  if (&out == &fresh) into.add(std::move(fresh));
}
}  // namespace

template <class F>
void PeerLayer::over_pairs(int T, float* out, F&& f) const {
  const size_t d = static_cast<size_t>(cfg.d_model), HK = static_cast<size_t>(cfg.heads) * cfg.top_k;
  auto row = [&](const Tensor& table, size_t p) { return table.data() + static_cast<size_t>(idx_[p]) * d; };
  parallel_for(static_cast<size_t>(T), [&](size_t t) {
    float* ot = out + t * d;
    std::fill(ot, ot + d, 0.f);
    for (size_t p = t * HK; p < (t + 1) * HK; ++p) {
      if (p + 2 < (t + 1) * HK)  // the gathers are latency-bound at large N: ask for the rows early
        for (size_t j = 0; j < d; j += 16) {
          __builtin_prefetch(row(u, p + 2) + j);
          __builtin_prefetch(row(v, p + 2) + j);
        }
      f(t, p, row(u, p), row(v, p), ot);
    }
  }, 8);
}

void PeerLayer::forward(const float* x, int T, float* y, bool training) {
  MOE_CHECK(T > 0, "peer layer: forward needs at least one token");
  const int d = cfg.d_model, H = cfg.heads, dk = cfg.d_key, hd = dk / 2, n = cfg.n_keys, K = cfg.top_k, HD = H * dk;
  x_ = x;
  T_ = T;
  training_ = training;
  timings_ = {};
  auto t0 = clock_type::now();
  q_raw_.resize({T, HD});
  q_.resize({T, HD});
  sgemm(false, true, T, HD, d, 1.f, x, d, wq.data(), d, 0.f, q_raw_.data(), HD);
  if (!cfg.query_bn) {
    q_ = q_raw_;
  } else {
    bn_mean_.resize({HD});
    bn_rstd_.resize({HD});
    if (training) {
      // Column sums in row order (contiguous reads), in double; blocks of 64 columns in parallel.
      std::vector<double> sum(static_cast<size_t>(HD), 0.0), sq(static_cast<size_t>(HD), 0.0);
      parallel_for(static_cast<size_t>((HD + 63) / 64), [&](size_t cb) {
        const size_t j0 = cb * 64, j1 = std::min<size_t>(static_cast<size_t>(HD), j0 + 64);
        for (int t = 0; t < T; ++t) {
          const float* row = q_raw_.data() + static_cast<size_t>(t) * HD;
          for (size_t j = j0; j < j1; ++j) sum[j] += row[j];
        }
        for (size_t j = j0; j < j1; ++j) sum[j] /= T;
        for (int t = 0; t < T; ++t) {
          const float* row = q_raw_.data() + static_cast<size_t>(t) * HD;
          for (size_t j = j0; j < j1; ++j) {
            const double c = row[j] - sum[j];
            sq[j] += c * c;
          }
        }
      }, 1);
      for (size_t j = 0; j < static_cast<size_t>(HD); ++j) {
        const double m = sum[j], var = sq[j] / T;
        bn_mean_[j] = static_cast<float>(m);
        bn_rstd_[j] = static_cast<float>(1.0 / std::sqrt(var + cfg.bn_eps));
        const double unbiased = T > 1 ? sq[j] / (T - 1) : var;
        running_mean[j] = static_cast<float>((1.0 - cfg.bn_momentum) * running_mean[j] + cfg.bn_momentum * m);
        running_var[j] = static_cast<float>((1.0 - cfg.bn_momentum) * running_var[j] + cfg.bn_momentum * unbiased);
      }
    } else {
      for (int j = 0; j < HD; ++j) {
        bn_mean_[static_cast<size_t>(j)] = running_mean[static_cast<size_t>(j)];
        bn_rstd_[static_cast<size_t>(j)] = 1.f / std::sqrt(running_var[static_cast<size_t>(j)] + cfg.bn_eps);
      }
    }
    parallel_for(static_cast<size_t>(T), [&](size_t t) {
      for (int j = 0; j < HD; ++j) {
        const size_t i = t * HD + j;
        q_[i] = bn_gamma[static_cast<size_t>(j)] * (q_raw_[i] - bn_mean_[static_cast<size_t>(j)]) * bn_rstd_[static_cast<size_t>(j)] +
                bn_beta[static_cast<size_t>(j)];
      }
    }, 64);
  }
  timings_.query = ms_since(t0);
  // Retrieval, a block of (token, head) rows at a time: half-scores by two GEMMs, then product keys.
  const size_t R = static_cast<size_t>(T) * H;
  idx_.resize(R * K);
  score_.resize(R * K);
  gate_.resize(R * K);
  pre_.resize(R * K);
  const size_t block = 1024;
  std::vector<float> s1(block * n), s2(block * n);
  for (size_t r0 = 0; r0 < R; r0 += block) {
    const int rows = static_cast<int>(std::min(block, R - r0));
    t0 = clock_type::now();
    sgemm(false, true, rows, n, hd, 1.f, q_.data() + r0 * dk, dk, k1.data(), hd, 0.f, s1.data(), n);
    sgemm(false, true, rows, n, hd, 1.f, q_.data() + r0 * dk + hd, dk, k2.data(), hd, 0.f, s2.data(), n);
    timings_.scores += ms_since(t0);
    t0 = clock_type::now();
    parallel_for(static_cast<size_t>(rows), [&](size_t r) {
      const size_t o = (r0 + r) * K;
      product_key_topk(s1.data() + r * n, s2.data() + r * n, n, K, idx_.data() + o, score_.data() + o);
      float* g = gate_.data() + o;
      if (cfg.score == "softmax") {
        softmax(score_.data() + o, g, K);
      } else {
        for (int i = 0; i < K; ++i) g[i] = sigmoid(score_[o + static_cast<size_t>(i)]);
      }
    }, 16);
    timings_.topk += ms_since(t0);
  }
  // Experts: y_t = Σ_{h,i} g·act(u_eᵀx_t)·v_e.
  t0 = clock_type::now();
  const bool gelu = cfg.activation == "gelu";
  over_pairs(T, y, [&](size_t t, size_t p, const float* ue, const float* ve, float* yt) {
    const float z = dot(ue, x + t * d, d);
    pre_[p] = z;
    axpy(gate_[p] * act_fwd(gelu, z), ve, yt, d);
  });
  timings_.experts = ms_since(t0);
}

void PeerLayer::backward(const float* dy, float* dx) {
  MOE_CHECK(x_ != nullptr, "peer layer: backward called before forward");
  const int T = T_, d = cfg.d_model, H = cfg.heads, dk = cfg.d_key, hd = dk / 2, n = cfg.n_keys, K = cfg.top_k, HD = H * dk;
  const size_t P = static_cast<size_t>(T) * H * K;
  const bool gelu = cfg.activation == "gelu";
  const float* x = x_;
  auto t0 = clock_type::now();
  // Per pair p = (t, h, i): v_eᵀdy_t, then the gate and pre-activation gradients; dx from u.
  std::vector<float> dgate(P), dz(P);
  over_pairs(T, dx, [&](size_t t, size_t p, const float* ue, const float* ve, float* dxt) {
    const float vdy = dot(ve, dy + t * d, d);
    dgate[p] = act_fwd(gelu, pre_[p]) * vdy;
    dz[p] = gate_[p] * vdy * act_grad(gelu, pre_[p]);
    axpy(dz[p], ue, dxt, d);
  });
  timings_.experts_bwd = ms_since(t0);
  t0 = clock_type::now();
  // u and v rows: du_e = Σ dz·x_t, dv_e = Σ g·act(z)·dy_t over the pairs that chose e.
  RowGroups groups;
  group_by_row(idx_, cfg.n_experts(), groups);
  add_rows(groups, d, du, [&](uint32_t p, float* g) { axpy(dz[p], x + static_cast<size_t>(p / (H * K)) * d, g, d); });
  add_rows(groups, d, dv, [&](uint32_t p, float* g) {
    axpy(gate_[p] * act_fwd(gelu, pre_[p]), dy + static_cast<size_t>(p / (H * K)) * d, g, d);
  });
  timings_.rows_bwd = ms_since(t0);
  t0 = clock_type::now();
  // Gates → scores.
  std::vector<float> dscore(P);
  parallel_for(static_cast<size_t>(T) * H, [&](size_t r) {
    const float* g = gate_.data() + r * K;
    const float* dg = dgate.data() + r * K;
    float* ds = dscore.data() + r * K;
    if (cfg.score == "softmax") {
      float dot = 0.f;
      for (int i = 0; i < K; ++i) dot += g[i] * dg[i];
      for (int i = 0; i < K; ++i) ds[i] = g[i] * (dg[i] - dot);
    } else {
      for (int i = 0; i < K; ++i) ds[i] = dg[i] * g[i] * (1.f - g[i]);
    }
  }, 64);
  // Scores s1[i1] + s2[i2] → the query halves and the sub-key rows.
  Tensor dq({T, HD});
  dq.zero();
  parallel_for(static_cast<size_t>(T) * H, [&](size_t r) {
    float* dq1 = dq.data() + r * dk;
    for (int i = 0; i < K; ++i) {
      const size_t p = r * K + static_cast<size_t>(i);
      const int32_t e = idx_[p];
      const float* r1 = k1.data() + static_cast<size_t>(e / n) * hd;
      const float* r2 = k2.data() + static_cast<size_t>(e % n) * hd;
      for (int j = 0; j < hd; ++j) {
        dq1[j] += dscore[p] * r1[j];
        dq1[hd + j] += dscore[p] * r2[j];
      }
    }
  }, 64);
  std::vector<int32_t> half(P);
  for (size_t p = 0; p < P; ++p) half[p] = idx_[p] / n;
  group_by_row(half, n, groups);
  add_rows(groups, hd, dk1, [&](uint32_t p, float* g) { axpy(dscore[p], q_.data() + static_cast<size_t>(p / K) * dk, g, hd); });
  for (size_t p = 0; p < P; ++p) half[p] = idx_[p] % n;
  group_by_row(half, n, groups);
  add_rows(groups, hd, dk2, [&](uint32_t p, float* g) { axpy(dscore[p], q_.data() + static_cast<size_t>(p / K) * dk + hd, g, hd); });
  timings_.keys_bwd = ms_since(t0);
  t0 = clock_type::now();
  // BatchNorm.
  if (cfg.query_bn) {
    // Blocks of 64 columns in parallel, each reading the rows in order (contiguous).
    parallel_for(static_cast<size_t>((HD + 63) / 64), [&](size_t cb) {
      const size_t j0 = cb * 64, j1 = std::min<size_t>(static_cast<size_t>(HD), j0 + 64);
      double sdq[64] = {}, sdqx[64] = {};
      for (int t = 0; t < T; ++t) {
        const size_t o = static_cast<size_t>(t) * HD;
        for (size_t j = j0; j < j1; ++j) {
          const double xhat = (q_raw_[o + j] - bn_mean_[j]) * bn_rstd_[j];
          sdq[j - j0] += dq[o + j];
          sdqx[j - j0] += dq[o + j] * xhat;
        }
      }
      for (size_t j = j0; j < j1; ++j) {
        dbn_gamma[j] += static_cast<float>(sdqx[j - j0]);
        dbn_beta[j] += static_cast<float>(sdq[j - j0]);
      }
      for (int t = 0; t < T; ++t) {
        const size_t o = static_cast<size_t>(t) * HD;
        for (size_t j = j0; j < j1; ++j) {
          const double gr = bn_gamma[j] * bn_rstd_[j];
          if (training_) {
            const double xhat = (q_raw_[o + j] - bn_mean_[j]) * bn_rstd_[j];
            dq[o + j] = static_cast<float>(gr * (dq[o + j] - sdq[j - j0] / T - xhat * sdqx[j - j0] / T));
          } else {
            dq[o + j] = static_cast<float>(gr * dq[o + j]);
          }
        }
      }
    }, 1);
  }
  sgemm(true, false, HD, d, T, 1.f, dq.data(), HD, x, d, 1.f, dwq.data(), d);
  sgemm(false, false, T, d, HD, 1.f, dq.data(), HD, wq.data(), d, 1.f, dx, d);
  timings_.query_bwd = ms_since(t0);
}

}  // namespace moe
