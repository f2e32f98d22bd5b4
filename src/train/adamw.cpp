#include "train/adamw.h"

#include <cmath>

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
  frozen_.assign(m_.size(), 0);
}

const std::string& AdamW::name_of(size_t i) const {
  return i < params_.size() ? params_[i].name : sparse_[i - params_.size()].name;
}

void AdamW::set_frozen(const std::string& name, bool frozen) {
  for (size_t i = 0; i < m_.size(); ++i)
    if (name_of(i) == name) {
      frozen_[i] = frozen;
      return;
    }
  fail("optimizer: no parameter named " + name);
}

std::vector<std::pair<std::string, Tensor*>> AdamW::state() {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (size_t i = 0; i < m_.size(); ++i) {
    out.emplace_back(name_of(i) + ".exp_avg", &m_[i]);
    out.emplace_back(name_of(i) + ".exp_avg_sq", &v_[i]);
  }
  return out;
}

void AdamW::step(float lr) {
  ++t_;
  const double bc1 = 1.0 - std::pow(static_cast<double>(cfg_.beta1), static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(static_cast<double>(cfg_.beta2), static_cast<double>(t_));
  const float step_size = static_cast<float>(lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
  auto adam = [=](float& w, float& m, float& v, float g, float decay) {
    m = b1 * m + (1.f - b1) * g;
    v = b2 * v + (1.f - b2) * g * g;
    w -= decay * w + step_size * m / (std::sqrt(v) * inv_sqrt_bc2 + eps);
  };
  for (size_t pi = 0; pi < params_.size(); ++pi) {
    if (frozen_[pi]) continue;
    Tensor& w = *params_[pi].value;
    const Tensor& g = *params_[pi].grad;
    Tensor& m = m_[pi];
    Tensor& v = v_[pi];
    const float decay = w.ndim() >= 2 ? lr * cfg_.weight_decay : 0.f;  // no decay on norms and vectors
    parallel_for(w.numel(), [&](size_t i) { adam(w[i], m[i], v[i], g[i], decay); }, 4096);
  }
  for (size_t si = 0; si < sparse_.size(); ++si) {  // lazy: the rows in the gradient only, no decay
    const size_t pi = params_.size() + si;
    const SparseRows& g = *sparse_[si].grad;
    if (frozen_[pi] || g.rows.empty()) continue;
    Tensor& w = *sparse_[si].value;
    Tensor& m = m_[pi];
    Tensor& v = v_[pi];
    const size_t width = static_cast<size_t>(w.dim(1));
    parallel_for(g.rows.size(), [&](size_t r) {
      const size_t o = static_cast<size_t>(g.rows[r]) * width;
      for (size_t j = 0; j < width; ++j) adam(w[o + j], m[o + j], v[o + j], g.grad[r * width + j], 0.f);
    }, 64);
  }
}

static double sum_squares(const Tensor& g) {
  double s = 0.0;
  for (size_t i = 0; i < g.numel(); ++i) s += static_cast<double>(g[i]) * g[i];
  return s;
}

static void scale(Tensor& g, float s) {
  for (size_t i = 0; i < g.numel(); ++i) g[i] *= s;
}

static void divide(Tensor& g, float n) {
  for (size_t i = 0; i < g.numel(); ++i) g[i] /= n;
}

double clip_grad_norm(const std::vector<Param>& params, double max_norm, const std::vector<SparseParam>& sparse) {
  double ss = 0.0;
  for (const Param& p : params) ss += sum_squares(*p.grad);
  for (const SparseParam& p : sparse) ss += sum_squares(p.grad->grad);
  const double norm = std::sqrt(ss);
  if (max_norm > 0.0 && norm > max_norm) {
    const float s = static_cast<float>(max_norm / (norm + 1e-6));
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
