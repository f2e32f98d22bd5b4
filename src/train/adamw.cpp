#include "train/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"

namespace moe {

AdamW::AdamW(std::vector<Param> params, const AdamWConfig& c, std::vector<SparseParam> sparse)
    : cfg_(c), params_(std::move(params)), sparse_(std::move(sparse)) {
  for (const Param& p : params_) {
    m_.emplace_back(p.value->shape());
    v_.emplace_back(p.value->shape());
  }
  for (const SparseParam& p : sparse_) {
    m_.emplace_back(p.value->shape());
    v_.emplace_back(p.value->shape());
  }
  frozen_.assign(m_.size(), {});
}

nlohmann::json freeze_to_json(const FreezeMask& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [name, ranges] : m) {
    nlohmann::json r = nlohmann::json::array();
    for (const auto& [b, e] : ranges) r.push_back({b, e});
    j[name] = r;
  }
  return j;
}

FreezeMask freeze_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail(where + ": \"frozen\" must be an object of parameter names; the checkpoint is damaged");
  FreezeMask m;
  for (const auto& item : j.items()) {
    const std::string& name = item.key();  // a plain name, not a structured binding: clang 14 cannot capture those
    const nlohmann::json& ranges = item.value();
    auto bad = [&] { fail(where + ": frozen rows of '" + name + "' must be [[begin, end], ...] with 0 <= begin < end; the checkpoint is damaged"); };
    if (!ranges.is_array()) bad();
    for (const auto& r : ranges) {
      if (!r.is_array() || r.size() != 2 || !r[0].is_number_integer() || !r[1].is_number_integer()) bad();
      const int64_t b = r[0].get<int64_t>(), e = r[1].get<int64_t>();
      if (b < 0 || e <= b) bad();
      m[name].emplace_back(b, e);
    }
  }
  return m;
}

// The parameter's rows along dim 0 and the elements of one row.
static std::pair<int64_t, int64_t> rows_of(const Tensor& t) {
  const int64_t rows = t.ndim() == 0 ? 1 : t.dim(0);
  return {rows, rows > 0 ? static_cast<int64_t>(t.numel()) / rows : 0};
}

// Per row of `t`, 1 where m freezes it; an empty vector when the name is not in m.
static std::vector<uint8_t> row_flags(const FreezeMask& m, const std::string& name, const Tensor& t) {
  auto it = m.find(name);
  if (it == m.end()) return {};
  const int64_t rows = rows_of(t).first;
  std::vector<uint8_t> f(static_cast<size_t>(rows), 0);
  for (const auto& [b, e] : it->second) {
    if (e > rows)
      fail("freeze mask: rows [" + std::to_string(b) + ", " + std::to_string(e) + ") of '" + name + "' are outside its " +
           std::to_string(rows) + " rows (a mask of another model?)");
    std::fill(f.begin() + b, f.begin() + e, uint8_t{1});
  }
  return f;
}

int64_t frozen_param_count(const FreezeMask& m, const std::vector<Param>& params) {
  int64_t n = 0;
  size_t found = 0;
  for (const Param& p : params) {
    const std::vector<uint8_t> f = row_flags(m, p.name, *p.value);
    if (m.count(p.name)) ++found;
    for (uint8_t x : f) n += x ? rows_of(*p.value).second : 0;
  }
  if (found != m.size())
    for (const auto& [name, r] : m) {
      bool known = false;
      for (const Param& p : params) known |= p.name == name;
      if (!known) fail("freeze mask: no parameter named '" + name + "' (a mask of another model?)");
    }
  return n;
}

const std::string& AdamW::name_of(size_t i) const {
  return i < params_.size() ? params_[i].name : sparse_[i - params_.size()].name;
}

void AdamW::set_freeze(const FreezeMask& m) {
  size_t found = 0;
  for (size_t i = 0; i < m_.size(); ++i) {
    const Tensor& w = i < params_.size() ? *params_[i].value : *sparse_[i - params_.size()].value;
    frozen_[i] = row_flags(m, name_of(i), w);
    found += m.count(name_of(i));
  }
  if (found != m.size()) {
    std::vector<Param> all = params_;
    for (const SparseParam& p : sparse_) all.push_back({p.name, p.value, nullptr});
    frozen_param_count(m, all);  // names the unknown parameter
  }
}

void AdamW::mask_frozen_grads() {
  for (size_t pi = 0; pi < params_.size(); ++pi) {
    if (frozen_[pi].empty()) continue;
    Tensor& g = *params_[pi].grad;
    const int64_t width = rows_of(g).second;
    for (size_t r = 0; r < frozen_[pi].size(); ++r)
      if (frozen_[pi][r]) std::fill(g.data() + r * width, g.data() + (r + 1) * width, 0.f);
  }
  for (size_t si = 0; si < sparse_.size(); ++si) {
    const std::vector<uint8_t>& f = frozen_[params_.size() + si];
    if (f.empty()) continue;
    SparseRows& g = *sparse_[si].grad;
    const size_t width = static_cast<size_t>(sparse_[si].value->dim(1));
    for (size_t r = 0; r < g.rows.size(); ++r)
      if (f[static_cast<size_t>(g.rows[r])]) std::fill(g.grad.data() + r * width, g.grad.data() + (r + 1) * width, 0.f);
  }
}

std::vector<std::pair<std::string, Tensor*>> AdamW::state() {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (size_t i = 0; i < m_.size(); ++i) {
    out.emplace_back(name_of(i) + ".exp_avg", &m_[i]);
    out.emplace_back(name_of(i) + ".exp_avg_sq", &v_[i]);
  }
  return out;
}

void AdamW::step(float lr, float grad_scale) {
  ++t_;
  const double bc1 = 1.0 - std::pow(static_cast<double>(cfg_.beta1), static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(static_cast<double>(cfg_.beta2), static_cast<double>(t_));
  const float step_size = static_cast<float>(lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
  // The gradient scaled as clip_grad_norm would have stored it (the same float product), without its pass.
  auto adam = [=](float& w, float& m, float& v, float g_raw, float decay) {
    const float g = grad_scale == 1.f ? g_raw : g_raw * grad_scale;
    m = b1 * m + (1.f - b1) * g;
    v = b2 * v + (1.f - b2) * g * g;
    w -= decay * w + step_size * m / (std::sqrt(v) * inv_sqrt_bc2 + eps);
  };
  for (size_t pi = 0; pi < params_.size(); ++pi) {
    Tensor& w = *params_[pi].value;
    const Tensor& g = *params_[pi].grad;
    Tensor& m = m_[pi];
    Tensor& v = v_[pi];
    const float decay = w.ndim() >= 2 ? lr * cfg_.weight_decay : 0.f;  // no decay on norms and vectors
    const std::vector<uint8_t>& frozen = frozen_[pi];
    if (frozen.empty()) {  // in chunks, each a loop the compiler vectorises (the pointers do not alias)
      float* __restrict wp = w.data();
      float* __restrict mp = m.data();
      float* __restrict vp = v.data();
      const float* __restrict gp = g.data();
      parallel_for_simd(w.numel(), 4096, [&](size_t i) { adam(wp[i], mp[i], vp[i], gp[i], decay); });
      continue;
    }
    const size_t width = static_cast<size_t>(rows_of(w).second);
    parallel_for(w.numel(), [&](size_t i) {
      if (!frozen[i / width]) adam(w[i], m[i], v[i], g[i], decay);
    }, 4096);
  }
  for (size_t si = 0; si < sparse_.size(); ++si) {  // lazy: the rows in the gradient only, no decay
    const size_t pi = params_.size() + si;
    const SparseRows& g = *sparse_[si].grad;
    if (g.rows.empty()) continue;
    const std::vector<uint8_t>& frozen = frozen_[pi];
    Tensor& w = *sparse_[si].value;
    Tensor& m = m_[pi];
    Tensor& v = v_[pi];
    const size_t width = static_cast<size_t>(w.dim(1));
    parallel_for(g.rows.size(), [&](size_t r) {
      if (!frozen.empty() && frozen[static_cast<size_t>(g.rows[r])]) return;
      const size_t o = static_cast<size_t>(g.rows[r]) * width;
      for (size_t j = 0; j < width; ++j) adam(w[o + j], m[o + j], v[o + j], g.grad[r * width + j], 0.f);
    }, 64);
  }
}

// Σ g² in double: fixed chunks summed in parallel (each with the compiler's vector lanes), the chunks'
// sums added in order, so the result does not depend on the thread count.
static double sum_squares(const Tensor& g) {
  constexpr size_t kChunk = size_t{1} << 15;
  const size_t n = g.numel(), chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(chunks);
  parallel_for(chunks, [&](size_t c) {
    const float* p = g.data() + c * kChunk;
    const size_t m = std::min(kChunk, n - c * kChunk);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (size_t i = 0; i < m; ++i) s += static_cast<double>(p[i]) * p[i];
    part[c] = s;
  }, 2);
  double s = 0.0;
  for (double x : part) s += x;
  return s;
}

static void scale(Tensor& g, float s) {
  parallel_for(g.numel(), [&](size_t i) { g[i] *= s; }, 1 << 15);
}

static void divide(Tensor& g, float n) {
  for (size_t i = 0; i < g.numel(); ++i) g[i] /= n;
}

double grad_norm(const std::vector<Param>& params, const std::vector<SparseParam>& sparse, Comm* comm) {
  double ss = 0.0, sharded = 0.0;
  for (const Param& p : params) (p.shard.sharded() ? sharded : ss) += sum_squares(*p.grad);
  for (const SparseParam& p : sparse) ss += sum_squares(p.grad->grad);
  if (distributed(comm)) comm->allreduce_sum(&sharded, 1);
  ss += sharded;
  return std::sqrt(ss);
}

float clip_scale(double norm, double max_norm) {
  return max_norm > 0.0 && norm > max_norm ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.f;
}

double clip_grad_norm(const std::vector<Param>& params, double max_norm, const std::vector<SparseParam>& sparse,
                      Comm* comm) {
  const double norm = grad_norm(params, sparse, comm);
  const float s = clip_scale(norm, max_norm);
  if (s != 1.f) {
    for (const Param& p : params) scale(*p.grad, s);
    for (const SparseParam& p : sparse) scale(p.grad->grad, s);
  }
  return norm;
}

void divide_grads(const std::vector<Param>& params, const std::vector<SparseParam>& sparse, float n) {
  for (const Param& p : params) divide(*p.grad, n);
  for (const SparseParam& p : sparse) divide(p.grad->grad, n);
}

}  // namespace moe
