// expand.cpp — growing an MoE layer by experts for lifelong learning (docs/MECHANISMS.md §6), so that the
// grown layer computes what the old one did: old experts and router rows are copied; new router rows
// are zero and new experts enter routing with a logit offset of −MoeConfig::kEntryOffset that rises
// to 0 over entry_steps optimizer steps (Router::after_step_entry).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"
#include "moe/moe_layer.h"

namespace moe {

namespace {

// Rows [0, old.dim(0)) of `to` from `old`; the shapes agree past dimension 0.
void copy_rows(const Tensor& old, Tensor& to, const std::string& what) {
  MOE_CHECK(old.ndim() == to.ndim() && old.dim(0) <= to.dim(0),
            "moe expand: " + what + " has shape " + old.shape_str() + ", which does not fit " + to.shape_str());
  for (int i = 1; i < old.ndim(); ++i)
    MOE_CHECK(old.dim(i) == to.dim(i), "moe expand: " + what + " has shape " + old.shape_str() + " where " + to.shape_str() + " is grown");
  std::memcpy(to.data(), old.data(), sizeof(float) * old.numel());
}

double stddev(const float* p, size_t n) {
  double s = 0.0, ss = 0.0;
  for (size_t i = 0; i < n; ++i) s += p[i], ss += static_cast<double>(p[i]) * p[i];
  const double mean = s / static_cast<double>(n);
  return std::sqrt(std::max(0.0, ss / static_cast<double>(n) - mean * mean));
}

// The new rows of a stacked expert tensor (E', ...): zero, kept as drawn, or copies of old row
// (e − E_old) mod E_old with Gaussian noise of copy_noise × the old rows' std.
void fill_new_experts(Tensor& t, int64_t old_rows, bool zero, bool copy, float copy_noise, uint64_t seed, uint64_t stream) {
  const size_t row = t.numel() / static_cast<size_t>(t.dim(0));
  const double sd = copy_noise * stddev(t.data(), row * static_cast<size_t>(old_rows));
  for (int64_t e = old_rows; e < t.dim(0); ++e) {
    float* dst = t.data() + static_cast<size_t>(e) * row;
    if (copy) {
      std::memcpy(dst, t.data() + static_cast<size_t>((e - old_rows) % old_rows) * row, sizeof(float) * row);
      std::vector<float> noise(row);
      fill_normal(noise.data(), row, seed, stream * 4096 + static_cast<uint64_t>(e), 0.f, static_cast<float>(sd));
      for (size_t i = 0; i < row; ++i) dst[i] += noise[i];
    } else if (zero) {
      std::fill(dst, dst + row, 0.f);
    }
  }
}

}  // namespace

void MoeLayer::grow_from(const MoeLayer& old, NewExperts init, float copy_noise, uint64_t seed) {
  const int E_old = old.cfg.n_experts(), E = cfg.n_experts();
  MOE_CHECK(E > E_old && cfg.expert_hidden() == old.cfg.expert_hidden() && cfg.granularity == old.cfg.granularity,
            "moe expand: the grown layer must have more experts of the same width and granularity");
  const bool copy = init == NewExperts::copy;
  const uint64_t stream = 7000 + cfg.layer_id * 16;
  // Routed experts: the old ones copied; new W1, W3 as drawn (random) and W2 = 0, or copies.
  copy_rows(old.experts.w1, experts.w1, "experts.w1");
  copy_rows(old.experts.w3, experts.w3, "experts.w3");
  copy_rows(old.experts.w2, experts.w2, "experts.w2");
  fill_new_experts(experts.w1, E_old, false, copy, copy_noise, seed, stream + 1);
  fill_new_experts(experts.w3, E_old, false, copy, copy_noise, seed, stream + 3);
  fill_new_experts(experts.w2, E_old, true, copy, copy_noise, seed, stream + 2);
  if (cfg.n_shared_experts > 0) {
    copy_rows(old.shared.w1, shared.w1, "shared_experts.w1");
    copy_rows(old.shared.w3, shared.w3, "shared_experts.w3");
    copy_rows(old.shared.w2, shared.w2, "shared_experts.w2");
    if (cfg.shared_expert_gate) copy_rows(old.w_sg, w_sg, "shared_expert_gate.weight");
  }
  // Router matrices (W_r, W_n): old rows copied, new rows zero.
  std::vector<Param> mine, theirs;
  router->params(mine, "");
  old.router->params(theirs, "");
  MOE_CHECK(mine.size() == theirs.size(), "moe expand: the grown layer's router differs from the old one's");
  for (size_t i = 0; i < mine.size(); ++i) {
    mine[i].value->zero();
    copy_rows(*theirs[i].value, *mine[i].value, mine[i].name);
  }
  // Router state: per-expert entries (DeepSeek-V3's selection bias) start new experts at the lowest
  // old value, at the back of the queue; the rest (a reward baseline) is copied.
  auto old_buffers = old.router->buffers();
  auto new_buffers = router->buffers();
  for (size_t i = 0; i < new_buffers.size(); ++i) {
    const Tensor& from = *old_buffers[i].second;
    Tensor& to = *new_buffers[i].second;
    if (from.shape() == to.shape()) {
      to = from;
      continue;
    }
    copy_rows(from, to, "router." + new_buffers[i].first);
    const float low = *std::min_element(from.data(), from.data() + from.numel());
    std::fill(to.data() + from.numel(), to.data() + to.numel(), low);
  }
  // Entry offsets: the old experts' as they were (0 when the old layer had none), −kEntryOffset for new.
  MOE_CHECK(!router->entry_offset.empty(), "moe expand: the grown layer needs entry_steps > 0");
  router->entry_offset.zero();
  if (!old.router->entry_offset.empty()) copy_rows(old.router->entry_offset, router->entry_offset, "router.entry_offset");
  for (int e = E_old; e < E; ++e) router->entry_offset[e] = -MoeConfig::kEntryOffset;
}

void MoeLayer::freeze_old(int old_experts, bool with_router, const std::string& prefix, FreezeMask& out) {
  std::vector<Param> ps;
  experts.params(ps, prefix + "experts.");
  for (const Param& p : ps) out[p.name] = {{0, old_experts}};
  ps.clear();
  if (cfg.n_shared_experts > 0) shared.params(ps, prefix + "shared_experts.");
  if (cfg.shared_expert_gate) ps.push_back({prefix + "shared_expert_gate.weight", &w_sg, &dw_sg});
  for (const Param& p : ps) out[p.name] = {{0, p.value->dim(0)}};
  if (!with_router) return;
  ps.clear();
  router->params(ps, prefix);
  for (const Param& p : ps) out[p.name] = {{0, old_experts}};
}

}  // namespace moe
