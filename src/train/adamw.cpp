#include "train/adamw.h"

#include <cmath>

#include "core/error.h"
#include "core/parallel.h"

namespace moe {

AdamW::AdamW(std::vector<Param> params, const AdamWConfig& c) : cfg_(c), params_(std::move(params)) {
  for (const Param& p : params_) {
    m_.emplace_back(p.value->shape());
    v_.emplace_back(p.value->shape());
  }
  frozen_.assign(params_.size(), 0);
}

void AdamW::set_frozen(const std::string& name, bool frozen) {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].name == name) {
      frozen_[i] = frozen;
      return;
    }
  fail("optimizer: no parameter named " + name);
}

std::vector<std::pair<std::string, Tensor*>> AdamW::state() {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(params_[i].name + ".exp_avg", &m_[i]);
    out.emplace_back(params_[i].name + ".exp_avg_sq", &v_[i]);
  }
  return out;
}

void AdamW::step(float lr) {
  ++t_;
  const double bc1 = 1.0 - std::pow(static_cast<double>(cfg_.beta1), static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(static_cast<double>(cfg_.beta2), static_cast<double>(t_));
  const float step_size = static_cast<float>(lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  for (size_t pi = 0; pi < params_.size(); ++pi) {
    if (frozen_[pi]) continue;
    Tensor& w = *params_[pi].value;
    const Tensor& g = *params_[pi].grad;
    Tensor& m = m_[pi];
    Tensor& v = v_[pi];
    const float decay = w.ndim() >= 2 ? lr * cfg_.weight_decay : 0.f;  // no decay on norms and vectors
    const float b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
    parallel_for(w.numel(), [&](size_t i) {
      m[i] = b1 * m[i] + (1.f - b1) * g[i];
      v[i] = b2 * v[i] + (1.f - b2) * g[i] * g[i];
      w[i] -= decay * w[i] + step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    }, 4096);
  }
}

double clip_grad_norm(const std::vector<Param>& params, double max_norm) {
  double ss = 0.0;
  for (const Param& p : params) {
    const Tensor& g = *p.grad;
    double s = 0.0;
    for (size_t i = 0; i < g.numel(); ++i) s += static_cast<double>(g[i]) * g[i];
    ss += s;
  }
  const double norm = std::sqrt(ss);
  if (max_norm > 0.0 && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
    for (const Param& p : params) {
      Tensor& g = *p.grad;
      for (size_t i = 0; i < g.numel(); ++i) g[i] *= scale;
    }
  }
  return norm;
}

}  // namespace moe
