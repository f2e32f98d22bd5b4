#include "peer/peer_layer.h"

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
#include "peer/peer_stats.h"
#include "peer/product_keys.h"

namespace moe {

static const PeerConfig& validated(const PeerConfig& c) {
  c.validate();
  return c;
}

PeerLayer::PeerLayer(const PeerConfig& c)
    : cfg(validated(c)),
      wq({c.heads * c.d_key, c.hidden_size}), dwq({c.heads * c.d_key, c.hidden_size}),
      bn_gamma({c.heads * c.d_key}), dbn_gamma({c.heads * c.d_key}),
      bn_beta({c.heads * c.d_key}), dbn_beta({c.heads * c.d_key}),
      running_mean({c.heads * c.d_key}), running_var({c.heads * c.d_key}),
      k1({c.n_keys, c.d_key / 2}), k2({c.n_keys, c.d_key / 2}),
      u({c.n_experts(), c.hidden_size}), v({c.n_experts(), c.hidden_size}) {
  const uint64_t s = c.layer_id * 64 + 40;
  init_normal(wq.data(), wq.numel(), c.seed, s, 0.f, 1.f / std::sqrt(static_cast<float>(c.hidden_size)));
  init_normal(k1.data(), k1.numel(), c.seed, s + 1, 0.f, 1.f / std::sqrt(static_cast<float>(c.d_key / 2)));
  init_normal(k2.data(), k2.numel(), c.seed, s + 2, 0.f, 1.f / std::sqrt(static_cast<float>(c.d_key / 2)));
  init_normal(u.data(), u.numel(), c.seed, s + 3, 0.f, c.init_std);
  init_normal(v.data(), v.numel(), c.seed, s + 4, 0.f, c.init_std);
  bn_gamma.fill(1.f);
  running_var.fill(1.f);
}

void PeerLayer::collect_params(std::vector<Param>& out, const std::string& prefix) {
  out.push_back({prefix + "query.weight", &wq, &dwq});
  if (cfg.query_bn) {
    out.push_back({prefix + "query_bn.weight", &bn_gamma, &dbn_gamma});
    out.push_back({prefix + "query_bn.bias", &bn_beta, &dbn_beta});
  }
}

void PeerLayer::collect_sparse_params(std::vector<SparseParam>& out, const std::string& prefix) {
  out.push_back({prefix + "sub_keys.0", &k1, &dk1});
  out.push_back({prefix + "sub_keys.1", &k2, &dk2});
  out.push_back({prefix + "experts.u", &u, &du});
  out.push_back({prefix + "experts.v", &v, &dv});
}

void PeerLayer::collect_buffers(std::vector<NamedTensor>& out, const std::string& prefix) {
  if (!cfg.query_bn) return;
  out.emplace_back(prefix + "query_bn.running_mean", &running_mean);
  out.emplace_back(prefix + "query_bn.running_var", &running_var);
}

std::optional<std::vector<int32_t>> PeerLayer::experts_of(int t) const {
  const size_t HK = static_cast<size_t>(cfg.heads) * cfg.top_k;
  return std::vector<int32_t>(idx_.begin() + static_cast<long>(t * HK), idx_.begin() + static_cast<long>((t + 1) * HK));
}

void PeerLayer::distribute(Comm* comm) {
  if (distributed(comm))
    fail_job("expert parallelism: layer " + std::to_string(cfg.layer_id) + " is a PEER layer, whose expert tables train by "
         "rows (sparse gradients) that are not summed across ranks yet; train PEER models in a single process");
}

std::unique_ptr<FfnStats> PeerLayer::new_stats() const { return std::make_unique<PeerStats>(*this); }

int64_t PeerLayer::num_params() const { return cfg.num_params(); }

int64_t PeerLayer::num_active_params() const {
  const int64_t HD = static_cast<int64_t>(cfg.heads) * cfg.d_key;
  return HD * cfg.hidden_size + (cfg.query_bn ? 2 * HD : 0) + static_cast<int64_t>(cfg.n_keys) * cfg.d_key +
         2LL * cfg.heads * cfg.top_k * cfg.hidden_size;
}

double PeerLayer::flops_per_token() const {
  const double d = cfg.hidden_size, H = cfg.heads, dk = cfg.d_key, n = cfg.n_keys, k = cfg.top_k;
  const double query = 2.0 * d * H * dk, scores = 2.0 * H * n * dk, candidates = H * k * k;
  const double key_grads = 2.0 * 2.0 * H * k * dk, experts = 2.0 * 2.0 * H * k * d;
  return 3.0 * (query + experts) + scores + candidates + key_grads;
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
  const size_t d = static_cast<size_t>(cfg.hidden_size), HK = static_cast<size_t>(cfg.heads) * cfg.top_k;
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

void PeerLayer::forward(const float* x, int T, float* y, const FfnContext& ctx) {
  const bool training = ctx.training;
  MOE_CHECK(T > 0, "peer layer: forward needs at least one token");
  const int d = cfg.hidden_size, H = cfg.heads, dk = cfg.d_key, hd = dk / 2, n = cfg.n_keys, K = cfg.top_k, HD = H * dk;
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
      if (cfg.score == PeerScore::softmax) {
        softmax(score_.data() + o, g, K);
      } else {
        for (int i = 0; i < K; ++i) g[i] = sigmoid(score_[o + static_cast<size_t>(i)]);
      }
    }, 16);
    timings_.topk += ms_since(t0);
  }
  // Experts: y_t = Σ_{h,i} g·act(u_eᵀx_t)·v_e.
  t0 = clock_type::now();
  const bool gelu = cfg.activation == PeerActivation::gelu;
  over_pairs(T, y, [&](size_t t, size_t p, const float* ue, const float* ve, float* yt) {
    const float z = dot(ue, x + t * d, d);
    pre_[p] = z;
    axpy(gate_[p] * act_fwd(gelu, z), ve, yt, d);
  });
  timings_.experts = ms_since(t0);
}

void PeerLayer::backward(const float* dy, float* dx) {
  MOE_CHECK(x_ != nullptr, "peer layer: backward called before forward");
  const int T = T_, d = cfg.hidden_size, H = cfg.heads, dk = cfg.d_key, hd = dk / 2, n = cfg.n_keys, K = cfg.top_k, HD = H * dk;
  const size_t P = static_cast<size_t>(T) * H * K;
  const bool gelu = cfg.activation == PeerActivation::gelu;
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
    if (cfg.score == PeerScore::softmax) {
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
