#include "nn/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "core/rng.h"
#include "core/vmath.h"
#include "nn/attention_core.h"

namespace moe {

void AttentionConfig::validate() const {
  const ConfigCheck check("attention");
  check.positive("hidden_size", hidden_size);
  check.positive("num_attention_heads", num_attention_heads);
  check.require(num_key_value_heads >= 0 && num_attention_heads % kv_heads() == 0,
                "num_key_value_heads = " + std::to_string(num_key_value_heads) + " must divide num_attention_heads = " +
                    std::to_string(num_attention_heads));
  check.require(head_dim != 0 || hidden_size % num_attention_heads == 0,
                "num_attention_heads = " + std::to_string(num_attention_heads) + " does not divide hidden_size = " +
                    std::to_string(hidden_size) + "; set head_dim or choose a divisor");
  check.require(hd() > 0 && hd() % 2 == 0,
                "head_dim = " + std::to_string(hd()) + " must be positive and even (RoPE rotates pairs)");
  check.positive("rope_theta", rope_theta);
  check.positive("norm_eps", norm_eps);
  check.require(attention_multiplier >= 0.f, "attention_multiplier = " + std::to_string(attention_multiplier) +
                                                  " must be >= 0 (0: 1/sqrt(head_dim))");
}

float AttentionConfig::scale() const {
  return attention_multiplier > 0.f ? attention_multiplier : 1.f / std::sqrt(static_cast<float>(hd()));
}

int64_t AttentionConfig::num_params() const {
  const int64_t d = hidden_size, qd = static_cast<int64_t>(num_attention_heads) * hd(),
                kvd = static_cast<int64_t>(kv_heads()) * hd();
  int64_t n = 2 * d * qd + 2 * d * kvd;
  if (bias) n += qd + 2 * kvd;
  if (qk_norm == QkNorm::head) n += 2 * hd();
  if (qk_norm == QkNorm::full) n += qd + kvd;
  return n;
}

Attention::Attention(const AttentionConfig& c, uint64_t seed, uint64_t stream, float init_std) : cfg(c) {
  cfg.validate();
  const int d = c.hidden_size, qd = c.num_attention_heads * cfg.hd(), kvd = cfg.kv_heads() * cfg.hd();
  wq = Tensor({qd, d});
  wk = Tensor({kvd, d});
  wv = Tensor({kvd, d});
  wo = Tensor({d, qd});
  dwq = Tensor({qd, d});
  dwk = Tensor({kvd, d});
  dwv = Tensor({kvd, d});
  dwo = Tensor({d, qd});
  init_normal(wq.data(), wq.numel(), seed, stream, 0.f, init_std);
  init_normal(wk.data(), wk.numel(), seed, stream + 1, 0.f, init_std);
  init_normal(wv.data(), wv.numel(), seed, stream + 2, 0.f, init_std);
  init_normal(wo.data(), wo.numel(), seed, stream + 3, 0.f, init_std);
  if (c.bias) {  // zero, as nn.Linear's would be after a checkpoint's load; trained from there
    for (Tensor* t : {&bq, &dbq}) *t = Tensor({qd});
    for (Tensor* t : {&bk, &dbk, &bv, &dbv}) *t = Tensor({kvd});
  }
  if (c.qk_norm == QkNorm::head) {
    q_norm = RMSNorm(cfg.hd(), c.norm_eps);
    k_norm = RMSNorm(cfg.hd(), c.norm_eps);
  } else if (c.qk_norm == QkNorm::full) {
    q_norm = RMSNorm(qd, c.norm_eps);
    k_norm = RMSNorm(kvd, c.norm_eps);
  }
}

void Attention::project(const float* x, int n, float* qo, float* ko, float* vo, Tensor& qpre, Tensor& kpre, Gemms how) {
  const int d = cfg.hidden_size, qd = cfg.num_attention_heads * cfg.hd(), kvd = cfg.kv_heads() * cfg.hd();
  const bool norm = cfg.qk_norm != QkNorm::none;
  if (norm) {
    qpre.resize({n, qd});
    kpre.resize({n, kvd});
  }
  float* qp = norm ? qpre.data() : qo;
  float* kp = norm ? kpre.data() : ko;
  if (how == Gemms::packed) {
    pqkv_.matmul(x, n, {{qd, qp, qd}, {kvd, kp, kvd}, {kvd, vo, kvd}});
  } else if (how == Gemms::bf16) {
    to_bf16(x, xb_, static_cast<size_t>(n) * d);
    lq_.forward(xb_.data(), n, d, wq.data(), qd, qp);
    lk_.forward(xb_.data(), n, d, wk.data(), kvd, kp);
    lv_.forward(xb_.data(), n, d, wv.data(), kvd, vo);
  } else {
    sgemm(false, true, n, qd, d, 1.f, x, d, wq.data(), d, 0.f, qp, qd);
    sgemm(false, true, n, kvd, d, 1.f, x, d, wk.data(), d, 0.f, kp, kvd);
    sgemm(false, true, n, kvd, d, 1.f, x, d, wv.data(), d, 0.f, vo, kvd);
  }
  if (cfg.bias) {
    parallel_for(static_cast<size_t>(n), [&](size_t r) {
      for (int j = 0; j < qd; ++j) qp[r * qd + j] += bq[j];
      for (int j = 0; j < kvd; ++j) kp[r * kvd + j] += bk[j];
      for (int j = 0; j < kvd; ++j) vo[r * kvd + j] += bv[j];
    }, 64);
  }
  if (!norm) return;
  // Per head: n·H rows of hd; over the whole projection: n rows of H·hd. Same memory either way.
  const int qrows = cfg.qk_norm == QkNorm::head ? n * cfg.num_attention_heads : n;
  const int krows = cfg.qk_norm == QkNorm::head ? n * cfg.kv_heads() : n;
  q_norm.forward(qp, qrows, qo);
  k_norm.forward(kp, krows, ko);
}

// Column sums of g (n, m) added into db (m): a bias's gradient. Each task owns a block of columns
// and adds the rows in order, a row's block at a time (every column's sum in row order, so the result
// does not depend on the thread count).
static void add_column_sums(const float* g, int n, int m, Tensor& db) {
  constexpr int kBlock = 64;
  parallel_for(static_cast<size_t>((m + kBlock - 1) / kBlock), [&](size_t blk) {
    const int j0 = static_cast<int>(blk) * kBlock, w = std::min(kBlock, m - j0);
    float s[kBlock] = {};
    for (int r = 0; r < n; ++r) {
      const float* row = g + static_cast<size_t>(r) * m + j0;
#pragma omp simd
      for (int j = 0; j < w; ++j) s[j] += row[j];
    }
    for (int j = 0; j < w; ++j) db[static_cast<size_t>(j0 + j)] += s[j];
  }, 1);
}

void Attention::rope_tables(int L, int cap) {
  const int half = cfg.hd() / 2;
  if (cos_.numel() >= static_cast<size_t>(L) * half) return;
  if (cap > 0) L = std::min(cap, std::max(L, 2 * static_cast<int>(cos_.numel() / static_cast<size_t>(half))));
  cos_.resize({L, half});
  sin_.resize({L, half});
  for (int p = 0; p < L; ++p)
    for (int i = 0; i < half; ++i) {
      const double freq = std::pow(static_cast<double>(cfg.rope_theta), -2.0 * i / cfg.hd());
      cos_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(p * freq));
      sin_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(p * freq));
    }
}

void rope_apply(float* x, int n, int heads, int hd, int stride, const Tensor& cos_t, const Tensor& sin_t,
                bool inverse, int seq_len, int pos0) {
  const int half = hd / 2;
  MOE_CHECK(pos0 + std::min(n, seq_len) <= cos_t.dim(0), "rope: position beyond the rotation table");
  parallel_for(static_cast<size_t>(n), [&](size_t r) {
    const int p = pos0 + static_cast<int>(r % static_cast<size_t>(seq_len));  // position within its sequence
    const float* c = cos_t.data() + static_cast<size_t>(p) * half;
    const float* s = sin_t.data() + static_cast<size_t>(p) * half;
    for (int h = 0; h < heads; ++h) {
      float* v = x + r * stride + static_cast<size_t>(h) * hd;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        const float sn = inverse ? -s[i] : s[i];
        v[i] = a * c[i] - b * sn;
        v[i + half] = b * c[i] + a * sn;
      }
    }
  }, 64);
}

// The heads of one sequence a task of the fused core takes: all of them where there are sequences
// enough to keep every thread busy (four tasks a thread), so that one core reads whole rows of q, k, v
// (the heads of a row lie side by side, and the hardware prefetches a row's lines together); one
// otherwise. A head's result does not depend on which task computes it.
static int heads_per_task(int B, int heads) { return B >= 4 * num_threads() ? heads : 1; }

double Attention::core_flops(int B, int L) const {
  return 4.0 * B * cfg.num_attention_heads * causal_pairs(L) * cfg.hd();  // Q·Kᵀ and P·V
}

void Attention::forward(const float* x, int B, int L, float* y) {
  x_ = x;
  B_ = B;
  L_ = L;
  const int T = B * L, d = cfg.hidden_size, H = cfg.num_attention_heads, KV = cfg.kv_heads(), hd = cfg.hd();
  const int qd = H * hd, kvd = KV * hd, group = H / KV;
  q.resize({T, qd});
  k.resize({T, kvd});
  v.resize({T, kvd});
  o.resize({T, qd});
  lse.resize({B, H, L});
  const double Td = static_cast<double>(T) * d;
  {
    PhaseTimer pt("fwd: attention q, k, v", 2.0 * Td * (qd + 2 * kvd));
    const Gemms how = !pqkv_.empty() ? Gemms::packed : cfg.bf16 ? Gemms::bf16 : Gemms::fp32;
    project(x, T, q.data(), k.data(), v.data(), q_pre, k_pre, how);
  }
  {
    PhaseTimer pt("fwd: attention rope");
    rope_tables(L);
    rope_apply(q.data(), T, H, hd, qd, cos_, sin_, false, L);
    rope_apply(k.data(), T, KV, hd, kvd, cos_, sin_, false, L);
  }
  if (kv_ == Precision::bf16) {  // the keys and values a bf16 KV cache would hold
    round_to_bf16(k.data(), k.numel());
    round_to_bf16(v.data(), v.numel());
  }
  const float scale = cfg.scale();
  PhaseTimer core("fwd: attention scores", core_flops(B, L));
  const int hpt = heads_per_task(B, H);
  parallel_for_dynamic(static_cast<size_t>(B) * H / hpt, [&](size_t task) {
    for (size_t bh = task * hpt; bh < (task + 1) * hpt; ++bh) {
      const int b = static_cast<int>(bh) / H, h = static_cast<int>(bh) % H, g = h / group;
      const size_t qo = static_cast<size_t>(b) * L * qd + static_cast<size_t>(h) * hd;
      const size_t kvo = static_cast<size_t>(b) * L * kvd + static_cast<size_t>(g) * hd;
      causal_attention_forward(L, 0, hd, scale, q.data() + qo, qd, k.data() + kvo, v.data() + kvo, kvd,
                               o.data() + qo, lse.data() + bh * L);
    }
  });
  core.stop();
  PhaseTimer pt("fwd: attention out", 2.0 * Td * qd);
  if (!po_.empty()) {  // packed for inference: the products decoding computes (core/packed.h)
    po_.matmul(o.data(), T, y, d);
  } else if (cfg.bf16) {
    to_bf16(o.data(), ob_, o.numel());
    lo_.forward(ob_.data(), T, qd, wo.data(), d, y);
  } else {
    sgemm(false, true, T, d, qd, 1.f, o.data(), qd, wo.data(), qd, 0.f, y, d);
  }
}

void Attention::backward(const float* dy, float* dx) {
  const int B = B_, L = L_, T = B * L, d = cfg.hidden_size, H = cfg.num_attention_heads, KV = cfg.kv_heads();
  const int hd = cfg.hd();
  const int qd = H * hd, kvd = KV * hd, group = H / KV;
  const float scale = cfg.scale();
  do_.resize({T, qd});
  dq_.resize({T, qd});
  dk_.resize({T, kvd});
  dv_.resize({T, kvd});
  dk_.zero();
  dv_.zero();
  const double Td = static_cast<double>(T) * d;
  // y = o·Woᵀ
  PhaseTimer out("bwd: attention out", 4.0 * Td * qd);
  if (cfg.bf16) {
    to_bf16(dy, dyb_, static_cast<size_t>(T) * d);
    lo_.backward(dyb_.data(), ob_.data(), T, qd, d, dwo.data(), do_.data());
  } else {
    sgemm(true, false, d, qd, T, 1.f, dy, d, o.data(), qd, 1.f, dwo.data(), qd);
    sgemm(false, false, T, qd, d, 1.f, dy, d, wo.data(), qd, 0.f, do_.data(), qd);
  }
  out.stop();
  PhaseTimer core("bwd: attention scores", 2.5 * core_flops(B, L));
  // Whole kv-head groups per task: the q heads of a group accumulate into the same dk, dv.
  const int gpt = heads_per_task(B, KV);
  parallel_for_dynamic(static_cast<size_t>(B) * KV / gpt, [&](size_t task) {
    for (size_t bg = task * gpt; bg < (task + 1) * gpt; ++bg) {
      const int b = static_cast<int>(bg) / KV, g = static_cast<int>(bg) % KV;
      const size_t kvo = static_cast<size_t>(b) * L * kvd + static_cast<size_t>(g) * hd;
      for (int h = g * group; h < (g + 1) * group; ++h) {
        const size_t qo = static_cast<size_t>(b) * L * qd + static_cast<size_t>(h) * hd;
        causal_attention_backward(L, hd, scale, q.data() + qo, qd, k.data() + kvo, v.data() + kvo, kvd,
                                  lse.data() + (static_cast<size_t>(b) * H + h) * L, do_.data() + qo, dq_.data() + qo,
                                  dk_.data() + kvo, dv_.data() + kvo);
      }
    }
  });
  core.stop();
  PhaseTimer rope("bwd: attention rope");
  rope_apply(dq_.data(), T, H, hd, qd, cos_, sin_, true, L);
  rope_apply(dk_.data(), T, KV, hd, kvd, cos_, sin_, true, L);
  rope.stop();
  PhaseTimer qkv("bwd: attention q, k, v", 4.0 * Td * (qd + 2 * kvd));
  if (cfg.qk_norm != QkNorm::none) {  // dq_, dk_ become the gradients before the norms
    dq_pre_.resize({T, qd});
    dk_pre_.resize({T, kvd});
    q_norm.backward(dq_.data(), dq_pre_.data());
    k_norm.backward(dk_.data(), dk_pre_.data());
    std::swap(dq_, dq_pre_);
    std::swap(dk_, dk_pre_);
  }
  if (cfg.bias) {
    add_column_sums(dq_.data(), T, qd, dbq);
    add_column_sums(dk_.data(), T, kvd, dbk);
    add_column_sums(dv_.data(), T, kvd, dbv);
  }
  if (cfg.bf16) {
    to_bf16(dq_.data(), dqb_, dq_.numel());
    to_bf16(dk_.data(), dkb_, dk_.numel());
    to_bf16(dv_.data(), dvb_, dv_.numel());
    lq_.backward(dqb_.data(), xb_.data(), T, d, qd, dwq.data(), dx);
    lk_.backward(dkb_.data(), xb_.data(), T, d, kvd, dwk.data(), dx, true);
    lv_.backward(dvb_.data(), xb_.data(), T, d, kvd, dwv.data(), dx, true);
    return;
  }
  sgemm(true, false, qd, d, T, 1.f, dq_.data(), qd, x_, d, 1.f, dwq.data(), d);
  sgemm(true, false, kvd, d, T, 1.f, dk_.data(), kvd, x_, d, 1.f, dwk.data(), d);
  sgemm(true, false, kvd, d, T, 1.f, dv_.data(), kvd, x_, d, 1.f, dwv.data(), d);
  sgemm(false, false, T, d, qd, 1.f, dq_.data(), qd, wq.data(), d, 0.f, dx, d);
  sgemm(false, false, T, d, kvd, 1.f, dk_.data(), kvd, wk.data(), d, 1.f, dx, d);
  sgemm(false, false, T, d, kvd, 1.f, dv_.data(), kvd, wv.data(), d, 1.f, dx, d);
}

// Each of KV heads' first `filled` positions of hd values from a buffer of old_cap positions a head
// to one of cap positions a head.
template <class T>
static void copy_heads(const T* from, T* to, int KV, int old_cap, int cap, int hd, int filled) {
  for (int g = 0; g < KV && filled > 0; ++g)
    std::memcpy(to + static_cast<size_t>(g) * cap * hd, from + static_cast<size_t>(g) * old_cap * hd,
                sizeof(T) * static_cast<size_t>(filled) * hd);
}

static bf16_vector regrown(const bf16_vector& b, int KV, int old_cap, int cap, int hd, int filled) {
  bf16_vector grown(static_cast<size_t>(KV) * cap * hd);
  copy_heads(b.data(), grown.data(), KV, old_cap, cap, hd, filled);
  return grown;
}

void Attention::forward_cached(const float* x, int n, Cache& cache, int max_len, float* y) {
  forward_cached(x, {{&cache, n}}, max_len, y);
}

void Attention::forward_cached(const float* x, const std::vector<Segment>& segments, int max_len, float* y) {
  const int d = cfg.hidden_size, H = cfg.num_attention_heads, KV = cfg.kv_heads(), hd = cfg.hd();
  const int qd = H * hd, kvd = KV * hd, group = H / KV;
  const bool bf = kv_ == Precision::bf16;
  std::vector<int> row0(segments.size() + 1, 0);  // segment j's rows are [row0[j], row0[j + 1])
  int longest = 0;
  for (size_t j = 0; j < segments.size(); ++j) {
    const Segment& s = segments[j];
    MOE_CHECK(s.n > 0, "attention: a segment without rows");
    row0[j + 1] = row0[j] + s.n;
    const int p0 = s.cache->len;
    MOE_CHECK(p0 + s.n <= max_len, "attention: the KV cache holds " + std::to_string(max_len) + " positions");
    longest = std::max(longest, p0 + s.n);
    // The cache grows with the sequence (doubling, up to max_len), so that a model with a context of
    // tens of thousands of positions does not hold them all from its first token.
    Cache& c = *s.cache;
    const bool stored_other = c.cap > 0 && (bf ? c.kb.empty() : c.k.empty());
    if (stored_other) {  // an empty cache of the other format: start over in this one
      MOE_CHECK(p0 == 0, "attention: the KV cache's format changed while it holds positions; call set_kv_cache before "
                         "the first token, or reset the cache");
      c = Cache{};
    }
    if (c.cap < p0 + s.n) {
      const int cap = std::min(max_len, std::max(p0 + s.n, c.cap == 0 ? 64 : 2 * c.cap));
      if (bf) {
        for (bf16_vector* b : {&c.kb, &c.vb}) *b = regrown(*b, KV, c.cap, cap, hd, p0);
      } else {
        for (Tensor* t : {&c.k, &c.v}) {
          Tensor grown({KV, cap, hd});
          copy_heads(t->data(), grown.data(), KV, c.cap, cap, hd, p0);
          *t = std::move(grown);
        }
      }
      c.cap = cap;
      c.hd = hd;
    }
  }
  const int n = row0.back();
  rope_tables(longest, max_len);
  // One projection of every segment's rows; each segment's keys and values then go to its cache.
  Tensor qn({n, qd}), kn({n, kvd}), vn({n, kvd}), qpre, kpre;
  project(x, n, qn.data(), kn.data(), vn.data(), qpre, kpre, pqkv_.empty() ? Gemms::fp32 : Gemms::packed);
  for (size_t j = 0; j < segments.size(); ++j) {
    Cache& c = *segments[j].cache;
    const size_t r = static_cast<size_t>(row0[j]) * kvd;
    rope_apply(qn.data() + static_cast<size_t>(row0[j]) * qd, segments[j].n, H, hd, qd, cos_, sin_, false, segments[j].n, c.len);
    rope_apply(kn.data() + r, segments[j].n, KV, hd, kvd, cos_, sin_, false, segments[j].n, c.len);
    for (int i = 0; i < segments[j].n; ++i)
      for (int g = 0; g < KV; ++g) {
        const size_t from = r + static_cast<size_t>(i) * kvd + static_cast<size_t>(g) * hd, to = c.at(g, c.len + i);
        if (bf) {
          to_bf16(kn.data() + from, c.kb.data() + to, static_cast<size_t>(hd));
          to_bf16(vn.data() + from, c.vb.data() + to, static_cast<size_t>(hd));
        } else {
          std::memcpy(c.k.data() + to, kn.data() + from, sizeof(float) * hd);
          std::memcpy(c.v.data() + to, vn.data() + from, sizeof(float) * hd);
        }
      }
    c.len += segments[j].n;
  }
  const float scale = cfg.scale();
  Tensor on({n, qd});
  // Every (segment, head) pair: the segment's new rows against its cache, causally among themselves.
  // A prompt's rows (a block or more) go through the fused core, which holds a block of probabilities
  // at a time, not all m × ctx of them; a few rows (decoding) through BLAS, whose matrix-vector
  // product reads each cached key once where the core would first transpose the cache. (The query
  // heads of a key-value group each read the group's cache: taking them as the rows of one product
  // measured slower, as BLAS then packs the keys and a group's heads no longer run in parallel.)
  parallel_for_dynamic(segments.size() * static_cast<size_t>(H), [&](size_t task) {
    const size_t j = task / static_cast<size_t>(H);
    const int h = static_cast<int>(task % static_cast<size_t>(H)), g = h / group;
    const Cache& c = *segments[j].cache;
    const int m = segments[j].n, ctx = c.len, p0 = ctx - m;
    const float* qh = qn.data() + static_cast<size_t>(row0[j]) * qd + h * hd;
    float* oh = on.data() + static_cast<size_t>(row0[j]) * qd + h * hd;
    if (m >= kCausalBlock) {
      if (!bf) {
        causal_attention_forward(m, p0, hd, scale, qh, qd, c.k.data() + c.at(g, 0), c.v.data() + c.at(g, 0), hd, oh, nullptr);
        return;
      }
      // A prompt against a bf16 cache: the head's keys and values widened once, then the fp32 core.
      std::vector<float> kw(static_cast<size_t>(ctx) * hd), vw(kw.size());
      from_bf16(c.kb.data() + c.at(g, 0), kw.data(), kw.size());
      from_bf16(c.vb.data() + c.at(g, 0), vw.data(), vw.size());
      causal_attention_forward(m, p0, hd, scale, qh, qd, kw.data(), vw.data(), hd, oh, nullptr);
      return;
    }
    std::vector<float> P(static_cast<size_t>(m) * ctx);
    if (bf) {  // each key and value read once per row, widened in registers: half the bytes of fp32
      for (int i = 0; i < m; ++i) {
        const int keys = p0 + i + 1;
        float* row = P.data() + static_cast<size_t>(i) * ctx;
        dots_bf16(qh + static_cast<size_t>(i) * qd, c.kb.data() + c.at(g, 0), hd, keys, hd, scale, row);
        softmax(row, row, keys);
        sum_rows_bf16(row, c.vb.data() + c.at(g, 0), hd, keys, hd, oh + static_cast<size_t>(i) * qd);
      }
      return;
    }
    sgemm(false, true, m, ctx, hd, scale, qh, qd, c.k.data() + c.at(g, 0), hd, 0.f, P.data(), ctx);
    for (int i = 0; i < m; ++i) {  // new token i sits at position p0 + i
      float* row = P.data() + static_cast<size_t>(i) * ctx;
      softmax(row, row, p0 + i + 1);
      std::fill(row + p0 + i + 1, row + ctx, 0.f);
    }
    sgemm(false, false, m, hd, ctx, 1.f, P.data(), ctx, c.v.data() + c.at(g, 0), hd, 0.f, oh, qd);
  });
  if (po_.empty())
    sgemm(false, true, n, d, qd, 1.f, on.data(), qd, wo.data(), qd, 0.f, y, d);
  else
    po_.matmul(on.data(), n, y, d);
}

void Attention::shift_cache(Cache& cache, int keep, int discard) {
  MOE_CHECK(keep >= 0 && discard > 0 && keep + discard <= cache.len, "attention: a cache shift beyond the cached positions");
  const int hd = cfg.hd(), moved = cache.len - keep - discard;
  cache.len -= discard;
  if (moved == 0) return;
  rope_tables(discard + 1);
  const size_t from = static_cast<size_t>(keep + discard) * hd, to = static_cast<size_t>(keep) * hd,
               count = static_cast<size_t>(moved) * hd;
  std::vector<float> widened(cache.kb.empty() ? 0 : count);
  for (int g = 0; g < cfg.kv_heads(); ++g) {
    const size_t head = cache.at(g, 0);
    // Every moved key back by `discard` positions: the inverse rotation of position `discard`.
    if (cache.kb.empty()) {
      for (float* b : {cache.k.data() + head, cache.v.data() + head}) std::memmove(b + to, b + from, sizeof(float) * count);
      rope_apply(cache.k.data() + head + to, moved, 1, hd, hd, cos_, sin_, true, 1, discard);
    } else {  // in fp32, then rounded back: the keys move by at most one bf16 rounding
      for (bf16_t* b : {cache.kb.data() + head, cache.vb.data() + head}) std::memmove(b + to, b + from, sizeof(bf16_t) * count);
      from_bf16(cache.kb.data() + head + to, widened.data(), count);
      rope_apply(widened.data(), moved, 1, hd, hd, cos_, sin_, true, 1, discard);
      to_bf16(widened.data(), cache.kb.data() + head + to, count);
    }
  }
}

void Attention::pack(WeightFormat f) {
  const int d = cfg.hidden_size, qd = cfg.num_attention_heads * cfg.hd(), kvd = cfg.kv_heads() * cfg.hd();
  pack_and_round({{wq.data(), qd}, {wk.data(), kvd}, {wv.data(), kvd}}, d, f, pqkv_);
  pack_and_round(wo.data(), d, qd, f, po_);
  cfg.bf16 = false;
}

size_t Attention::packed_bytes() const { return pqkv_.bytes() + po_.bytes(); }

}  // namespace moe
