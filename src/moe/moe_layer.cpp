#include "moe/moe_layer.h"

#include <chrono>
#include <cstring>

#include "core/error.h"
#include "core/bf16.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "core/rng.h"
#include "core/timer.h"
#include "core/vmath.h"
#include "moe/routing_stats.h"

namespace moe {

namespace {
constexpr float kInitStd = 0.02f;
}  // namespace

static const MoeConfig& validated(const MoeConfig& c) {
  c.validate();
  return c;
}

MoeLayer::MoeLayer(const MoeConfig& c)
    : cfg(validated(c)),
      router(Router::create(cfg)),
      experts(cfg.n_experts(), cfg.hidden_size, cfg.expert_hidden(), cfg.seed, cfg.layer_id * 64 + 8, kInitStd) {
  experts.bf16 = cfg.precision == Precision::bf16;
  if (cfg.n_shared_experts > 0) {
    shared = ExpertBank(1, cfg.hidden_size, cfg.n_shared_experts * cfg.shared_width(), cfg.seed, cfg.layer_id * 64 + 16,
                        kInitStd);
    shared.bf16 = experts.bf16;
    if (cfg.shared_expert_gate) {
      w_sg = Tensor({cfg.hidden_size});
      dw_sg = Tensor({cfg.hidden_size});
      init_normal(w_sg.data(), w_sg.numel(), cfg.seed, cfg.layer_id * 64 + 20, 0.f, kInitStd);
    }
  }
}

void MoeLayer::distribute(Comm* comm) {
  if (!distributed(comm)) return;
  if (!router->traits.expert_parallel)
    fail_job("expert parallelism: layer " + std::to_string(cfg.layer_id) + "'s router (model.router = \"" +
         std::string(name_of(cfg.router)) + "\") assigns experts over the whole batch or keeps a reward baseline, "
         "which one rank's share of the batch cannot do; use a token-choice router (topk_softmax, softmax_topk, "
         "noisy_topk, sigmoid_bias, hash) or a single process");
  xchg_ = ExpertExchange(comm, cfg.n_experts());
  ExpertBank mine(xchg_.El, cfg.hidden_size, cfg.expert_hidden(), cfg.seed, cfg.layer_id * 64 + 8, kInitStd, xchg_.first,
                  cfg.n_experts());
  mine.bf16 = experts.bf16;
  experts = std::move(mine);
  router->comm = comm;
}

void MoeLayer::plan_dispatch(float cf) {
  const int E = cfg.n_experts();
  if (!xchg_.comm) {
    plan_ = make_dispatch_plan(routing_, E, cf, cfg.drop_policy);
    return;
  }
  Comm& c = *xchg_.comm;
  const int P = batch_comm_ ? c.size() : 1;  // ranks whose tokens share the experts' capacity
  const int64_t capacity = expert_capacity(cf, routing_.T * P, routing_.k, E);
  const size_t n = routing_.expert.size();
  std::vector<uint8_t> keep(n, 1);
  if (capacity >= 0 && P == 1) {
    keep = capacity_keep(routing_, E, capacity, cfg.drop_policy);
  } else if (capacity >= 0) {
    // Capacity is per expert over the whole batch: every rank decides on the routing of every rank,
    // in the order one process holding the batch would (rank by rank is token order), and keeps the
    // verdicts on its own pairs. 8 bytes a pair, against 2·d·4 for the rows themselves.
    Routing all;
    all.T = routing_.T * P;
    all.k = routing_.k;
    all.expert.resize(n * P);
    all.gate.resize(n * P);
    c.allgather(routing_.expert.data(), sizeof(int32_t) * n, all.expert.data());
    c.allgather(routing_.gate.data(), sizeof(float) * n, all.gate.data());
    const std::vector<uint8_t> every = capacity_keep(all, E, capacity, cfg.drop_policy);
    std::copy(every.begin() + static_cast<ptrdiff_t>(n) * c.rank(), every.begin() + static_cast<ptrdiff_t>(n) * (c.rank() + 1),
              keep.begin());
  }
  plan_ = make_dispatch_plan(routing_, E, capacity, keep);
  xchg_.plan(plan_);
}

void MoeLayer::collect_params(std::vector<Param>& out, const std::string& prefix) {
  router->params(out, prefix);
  experts.params(out, prefix + "experts.");
  if (cfg.n_shared_experts > 0) shared.params(out, prefix + "shared_experts.");
  if (cfg.shared_expert_gate) out.push_back({prefix + "shared_expert_gate.weight", &w_sg, &dw_sg});
}

void MoeLayer::collect_buffers(std::vector<NamedTensor>& out, const std::string& prefix) {
  for (auto& [name, b] : router->buffers()) out.emplace_back(prefix + "router." + name, b);
  if (!router->entry_offset.empty()) out.emplace_back(prefix + "router.entry_offset", &router->entry_offset);
}

int64_t MoeLayer::num_params() const { return cfg.num_params(); }

int64_t MoeLayer::num_active_params() const {
  const int64_t d = cfg.hidden_size, h = cfg.expert_hidden();
  int64_t n = 3 * cfg.k() * h * d + cfg.router_params();
  n += 3 * static_cast<int64_t>(cfg.n_shared_experts) * cfg.shared_width() * d + (cfg.shared_expert_gate ? d : 0);
  return n;
}

void MoeLayer::pack_weights(WeightFormat f) {
  experts.pack(f);
  shared.pack(f);
}

int64_t MoeLayer::packed_active_params() const {
  if (!experts.packed()) return 0;
  const int64_t d = cfg.hidden_size;
  return 3 * (cfg.k() * cfg.expert_hidden() + static_cast<int64_t>(cfg.n_shared_experts) * cfg.shared_width()) * d;
}

double MoeLayer::packed_active_bytes() const {
  return static_cast<double>(cfg.k()) * static_cast<double>(experts.packed_bytes_per_expert()) +
         static_cast<double>(shared.E) * static_cast<double>(shared.packed_bytes_per_expert());
}

double MoeLayer::flops_per_token() const {
  // The router's d·E·G weights cost 14 FLOPs each (c_r); every other active weight 6 (c_f). A router
  // with no W_r (hash) or a second matrix (noisy_topk's W_n) is still counted at d·E·G routing weights.
  const double router_weights = static_cast<double>(cfg.hidden_size) * cfg.n_experts();
  return 6.0 * (static_cast<double>(num_active_params()) - router_weights) + 14.0 * router_weights;
}

std::unique_ptr<FfnStats> MoeLayer::new_stats() const { return std::make_unique<RoutingStats>(*this); }

void MoeLayer::set_reward(const float* reward) {
  router->set_reward(reward, routing_);
  losses_.router = router->losses();
}

void MoeLayer::forward(const float* x, int T, float* y, const FfnContext& opt) {
  MOE_CHECK(T > 0, "moe layer: forward needs at least one token");
  const int d = cfg.hidden_size;
  seq_len_ = opt.seq_len > 0 ? opt.seq_len : T;
  MOE_CHECK(T % seq_len_ == 0, "moe layer: seq_len = " + std::to_string(seq_len_) + " does not divide the " +
                                   std::to_string(T) + " tokens of the batch");
  x_ = x;
  T_ = T;
  training_ = opt.training;
  timings_ = {};

  // Router (with input jitter in training) and balance losses.
  auto t0 = clock_type::now();
  batch_comm_ = opt.replicated ? nullptr : comm();
  router->comm = batch_comm_;
  xr_ = x;
  if (opt.training && cfg.router_jitter_noise > 0.f) {
    jitter_.resize({T, d});
    xr_buf_.resize({T, d});
    const uint64_t stream = (opt.step << 16) | (cfg.layer_id << 4) | 5;
    fill_uniform(jitter_.data(), jitter_.numel(), cfg.seed, stream, 1.f - cfg.router_jitter_noise,
                 1.f + cfg.router_jitter_noise, static_cast<uint64_t>(opt.token0) * static_cast<uint64_t>(d));
    for (size_t i = 0; i < jitter_.numel(); ++i) xr_buf_[i] = x[i] * jitter_[i];
    xr_ = xr_buf_.data();
  } else {
    jitter_.resize({0});
  }
  router->forward(xr_, T, opt, routing_);
  losses_.balance =
      balance_losses(cfg, router->prob.data(), router->logits.data(), routing_, seq_len_, nullptr, nullptr, batch_comm_);
  losses_.router = router->losses();
  timings_.router = ms_since(t0);

  // Dispatch: plan and gather, then the experts. With expert parallelism the gathered rows go to
  // their experts' ranks and the outputs come back (ExpertExchange); in one process the gather
  // writes straight into the experts' input.
  t0 = clock_type::now();
  // A router that obeys a capacity itself (expert choice) gets none from the plan.
  const float cf = router->traits.applies_capacity ? 0.f : cfg.capacity_factor;
  plan_dispatch(cf);
  const bool ep = xchg_.comm != nullptr;
  const int64_t rows = plan_.rows();                         // this rank's rows, in plan order
  const int64_t got = ep ? xchg_.rows_received() : rows;     // the rows this rank's experts compute
  const std::vector<int64_t>& offsets = ep ? xchg_.expert_offsets() : plan_.offsets;
  if (experts.bf16) {
    experts.xb.resize(static_cast<size_t>(got) * d);
    if (ep) xsend_b_.resize(static_cast<size_t>(rows) * d);
    dispatch_gather(plan_, x, d, ep ? xsend_b_.data() : experts.xb.data());
  } else {
    xbuf_.resize({got, d});
    if (ep) xsend_.resize({rows, d});
    dispatch_gather(plan_, x, d, ep ? xsend_.data() : xbuf_.data());
  }
  timings_.dispatch = ms_since(t0);
  if (ep) {
    t0 = clock_type::now();
    if (experts.bf16)
      xchg_.to_experts(xsend_b_.data(), d, experts.xb.data());
    else
      xchg_.to_experts(xsend_.data(), d, xbuf_.data());
    timings_.exchange += ms_since(t0);
  }

  t0 = clock_type::now();
  if (experts.bf16) {
    ybuf_bf16_.resize(static_cast<size_t>(got) * d);
    experts.forward_bf16(offsets, ybuf_bf16_.data());
  } else {
    ybuf_.resize({got, d});
    experts.forward(xbuf_.data(), offsets, ybuf_.data());
  }
  timings_.experts = ms_since(t0);
  if (ep) {
    t0 = clock_type::now();
    if (experts.bf16) {
      yloc_b_.resize(static_cast<size_t>(rows) * d);
      xchg_.back(ybuf_bf16_.data(), d, yloc_b_.data());
    } else {
      yloc_.resize({rows, d});
      xchg_.back(ybuf_.data(), d, yloc_.data());
    }
    timings_.exchange += ms_since(t0);
  }

  // Shared experts, applied to every token.
  t0 = clock_type::now();
  if (cfg.n_shared_experts > 0) {
    shared_out_.resize({T, d});
    shared.forward(x, {0, T}, shared_out_.data());
    if (cfg.shared_expert_gate) {
      sgate_.resize({T});
      parallel_for(static_cast<size_t>(T), [&](size_t t) {
        float z = 0.f;
        for (int j = 0; j < d; ++j) z += x[t * d + j] * w_sg[j];
        sgate_[t] = sigmoid(z);
      }, 256);
    }
  }
  timings_.shared = ms_since(t0);

  // Combine: y_t = Σ_i g_{t,i}·Y[row(t,i)] (+ shared).
  t0 = clock_type::now();
  const float* base = cfg.n_shared_experts > 0 ? shared_out_.data() : nullptr;
  const float* base_scale = cfg.shared_expert_gate ? sgate_.data() : nullptr;
  // The experts' rows in plan order: this rank's own (single process) or those that came back.
  if (experts.bf16)
    dispatch_combine(plan_, routing_, xchg_.comm ? yloc_b_.data() : ybuf_bf16_.data(), d, y, base, base_scale);
  else
    dispatch_combine(plan_, routing_, xchg_.comm ? yloc_.data() : ybuf_.data(), d, y, base, base_scale);
  timings_.combine = ms_since(t0);
  report_profile(false);
}

void MoeLayer::report_profile(bool backward) const {
  if (!profile_sink()) return;
  // Three GEMMs of (rows, d)×(d, h) per expert row and per shared-expert token; the backward does twice that.
  const double per = backward ? 4.0 : 2.0;
  const int64_t rows = xchg_.comm ? xchg_.rows_received() : plan_.rows();  // the rows this rank's experts computed
  const double routed = per * 3.0 * static_cast<double>(rows) * experts.d * experts.h;
  const double shared_flops = cfg.n_shared_experts > 0 ? per * 3.0 * static_cast<double>(T_) * shared.d * shared.h : 0.0;
  const MoeTimings& t = timings_;
  if (!backward) {
    profile_add("fwd: moe router", t.router);
    profile_add("fwd: moe dispatch", t.dispatch);
    profile_add("fwd: moe experts", t.experts, routed);
    if (shared_flops > 0.0) profile_add("fwd: moe shared experts", t.shared, shared_flops);
    profile_add("fwd: moe combine", t.combine);
    if (xchg_.comm) profile_add("fwd: moe all-to-all", t.exchange);
  } else {
    profile_add("bwd: moe combine", t.combine_bwd);
    profile_add("bwd: moe experts", t.experts_bwd, routed);
    profile_add("bwd: moe scatter", t.scatter_bwd);
    if (shared_flops > 0.0) profile_add("bwd: moe shared experts", t.shared_bwd, shared_flops);
    profile_add("bwd: moe router", t.router_bwd);
    if (xchg_.comm) profile_add("bwd: moe all-to-all", t.exchange_bwd);
  }
}

void MoeLayer::backward(const float* dy, float* dx) {
  MOE_CHECK(x_ != nullptr, "moe layer: backward called before forward");
  const int T = T_, d = cfg.hidden_size, E = cfg.n_experts(), k = routing_.k;

  // Combine backward: each kept row gets the token's dy and its gate (the experts apply the gate g
  // and return dgate = dy·y for the row); dropped pairs get nothing. With expert parallelism both
  // go to the experts' ranks, and each row's dx and gate gradient come back.
  auto t0 = clock_type::now();
  const bool ep = xchg_.comm != nullptr, bf16 = experts.bf16;
  const int64_t rows = plan_.rows(), got = ep ? xchg_.rows_received() : rows;
  const std::vector<int64_t>& offsets = ep ? xchg_.expert_offsets() : plan_.offsets;
  if (bf16) {
    experts.dyb.resize(static_cast<size_t>(got) * d);
    if (ep) xsend_b_.resize(static_cast<size_t>(rows) * d);
    dispatch_gather(plan_, dy, d, ep ? xsend_b_.data() : experts.dyb.data());
  } else {
    dybuf_.resize({got, d});
    if (ep) xsend_.resize({rows, d});
    dispatch_gather(plan_, dy, d, ep ? xsend_.data() : dybuf_.data());
  }
  row_gate_.resize({rows});
  row_dgate_.resize({rows});
  pairs_to_rows(plan_, routing_.gate.data(), row_gate_.data());
  timings_.combine_bwd = ms_since(t0);
  if (ep) {
    t0 = clock_type::now();
    gate_in_.resize({got});
    xchg_.to_experts(row_gate_.data(), 1, gate_in_.data());
    if (bf16)
      xchg_.to_experts(xsend_b_.data(), d, experts.dyb.data());
    else
      xchg_.to_experts(xsend_.data(), d, dybuf_.data());
    timings_.exchange_bwd += ms_since(t0);
  }

  // Experts backward; dX lands in ybuf (fp32; Y is no longer needed) or the experts' dxb (bf16).
  t0 = clock_type::now();
  const float* gate = ep ? gate_in_.data() : row_gate_.data();
  Tensor& dgate_rows = ep ? dgate_in_ : row_dgate_;  // the gate gradients of the experts' rows
  dgate_rows.resize({got});
  if (bf16) {
    experts.backward_bf16(offsets, gate, dgate_rows.data());
  } else {
    ybuf_.resize({got, d});
    experts.backward(xbuf_.data(), dybuf_.data(), offsets, gate, ybuf_.data(), dgate_rows.data());
  }
  timings_.experts_bwd = ms_since(t0);
  const float* dX = ybuf_.data();              // (rows, d) in plan order
  const bf16_t* dXb = experts.dxb.data();      // the same in bf16 mode
  if (ep) {
    t0 = clock_type::now();
    if (bf16) {
      yloc_b_.resize(static_cast<size_t>(rows) * d);
      xchg_.back(experts.dxb.data(), d, yloc_b_.data());
      dXb = yloc_b_.data();
    } else {
      yloc_.resize({rows, d});
      xchg_.back(ybuf_.data(), d, yloc_.data());
      dX = yloc_.data();
    }
    xchg_.back(dgate_in_.data(), 1, row_dgate_.data());
    timings_.exchange_bwd += ms_since(t0);
  }

  // Scatter: dx_t = Σ_i dX[row(t,i)].
  t0 = clock_type::now();
  dgate_.resize({T, k});
  float* dgate = dgate_.data();
  rows_to_pairs(plan_, row_dgate_.data(), dgate);
  if (bf16)
    dispatch_scatter(plan_, dXb, d, dx);
  else
    dispatch_scatter(plan_, dX, d, dx);
  timings_.scatter_bwd = ms_since(t0);

  // Shared experts (and the Qwen2-MoE gate).
  t0 = clock_type::now();
  if (cfg.n_shared_experts > 0) {
    dys_.resize({T, d});
    dxs_.resize({T, d});
    dz_.resize({T});
    dz_.zero();
    Tensor& dys = dys_;
    Tensor& dxs = dxs_;
    Tensor& dz = dz_;
    parallel_for(static_cast<size_t>(T), [&](size_t t) {
      const float s = cfg.shared_expert_gate ? sgate_[t] : 1.f;
      const float* dyt = dy + t * d;
      const float* so = shared_out_.data() + t * d;
      float* dyst = dys.data() + t * d;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int j = 0; j < d; ++j) {
        dyst[j] = s * dyt[j];
        dot += dyt[j] * so[j];
      }
      if (cfg.shared_expert_gate) dz[t] = dot * s * (1.f - s);
    }, 64);
    shared.backward(x_, dys.data(), {0, T}, nullptr, dxs.data(), nullptr);
    if (cfg.shared_expert_gate) {
      for (int t = 0; t < T; ++t)
        for (int j = 0; j < d; ++j) dw_sg[j] += dz[t] * x_[static_cast<size_t>(t) * d + j];
    }
    parallel_for(static_cast<size_t>(T), [&](size_t t) {
      for (int j = 0; j < d; ++j) dx[t * d + j] += dxs[t * d + j] + (cfg.shared_expert_gate ? dz[t] * w_sg[j] : 0.f);
    }, 64);
  }
  timings_.shared_bwd = ms_since(t0);

  // Router: balance-loss gradients through P and s, then the gate gradients.
  t0 = clock_type::now();
  dlogits_.resize({T, E});
  dlogits_.zero();
  if (balance_uses_prob(cfg)) {
    dprob_.resize({T, E});
    dprob_.zero();
    balance_losses(cfg, router->prob.data(), router->logits.data(), routing_, seq_len_, dprob_.data(), dlogits_.data(),
                   batch_comm_);
    router->prob_backward(dprob_.data(), dlogits_.data(), T);
  } else if (cfg.router_z_loss_coef > 0.f) {
    balance_losses(cfg, router->prob.data(), router->logits.data(), routing_, seq_len_, nullptr, dlogits_.data(), batch_comm_);
  }
  if (jitter_.empty()) {  // x is the router input: accumulate straight into dx
    router->backward(xr_, routing_, dgate, dlogits_.data(), dx);
  } else {                // x_r = x ⊙ u: dx += dx_r ⊙ u
    dxr_.resize({T, d});
    dxr_.zero();
    router->backward(xr_, routing_, dgate, dlogits_.data(), dxr_.data());
    parallel_for(static_cast<size_t>(T) * d, [&](size_t i) { dx[i] += dxr_[i] * jitter_[i]; });
  }
  timings_.router_bwd = ms_since(t0);
  report_profile(true);
}

}  // namespace moe
