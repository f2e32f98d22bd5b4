// Lifelong expansion (docs/MECHANISMS.md §6): `expand_model` keeps the model's function for every
// router with router rows (and with shared experts, granularity, a capacity, copied experts); what it
// cannot expand is refused naming the setting; training with the freeze mask leaves frozen rows and
// their AdamW moments bit-identical while the new rows move; the model's distillation term matches
// finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/expand.h"
#include "model/transformer.h"
#include "train/adamw.h"

namespace moe {
namespace {

ModelConfig tiny(const std::string& router) {
  ModelConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.intermediate_size = 16;
  c.max_position_embeddings = 16;
  c.initializer_range = 0.3f;
  c.moe.moe_intermediate_size = 8;
  c.moe.num_local_experts = 4;
  c.moe.num_experts_per_tok = router == "base" ? 1 : 2;
  c.moe.router = parse_enum<RouterKind>(router, "router");
  c.moe.router_init_std = 0.5f;
  c.moe.router_aux_loss_coef = router == "sigmoid_bias" ? 0.f : 0.01f;
  return c;
}

std::vector<int32_t> tokens(int n, int V, uint64_t stream) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>(rng_uniform(11, stream, static_cast<uint64_t>(i)) * static_cast<float>(V)) % V;
  return t;
}

// The old model's state moved off its initialisation: a few AdamW steps (so that biases, baselines
// and moments are not at their starting values).
void train_steps(TransformerLM& m, AdamW& opt, int steps, uint64_t seed, const FreezeMask* frozen = nullptr) {
  const int B = 2, L = m.cfg.max_position_embeddings, T = B * L;
  for (int s = 0; s < steps; ++s) {
    std::vector<int32_t> x = tokens(T, m.cfg.vocab_size, seed * 100 + static_cast<uint64_t>(s)), y = tokens(T, m.cfg.vocab_size, seed * 100 + 50 + static_cast<uint64_t>(s));
    m.zero_grad();
    m.forward(x.data(), y.data(), B, L, true, static_cast<uint64_t>(s));
    m.backward();
    if (frozen) opt.mask_frozen_grads();
    clip_grad_norm(m.params(), 1.0, m.sparse_params());
    opt.step(3e-3f);
    m.after_step();
  }
}

struct ExpandCase {
  const char* name;
  const char* router;
  int shared = 0;
  int granularity = 1;
  float capacity_factor = 0.f;
  ExpertInit init = ExpertInit::random;
};
void PrintTo(const ExpandCase& c, std::ostream* os) { *os << c.name; }

class ExpandPreserves : public ::testing::TestWithParam<ExpandCase> {};

// After `expand`, the logits of any input equal the old model's to fp32 rounding.
TEST_P(ExpandPreserves, LogitsOfTheOldModel) {
  const ExpandCase& k = GetParam();
  ModelConfig c = tiny(k.router);
  c.moe.n_shared_experts = k.shared;
  c.moe.shared_expert_gate = k.shared > 0;
  c.moe.granularity = k.granularity;
  c.moe.moe_intermediate_size = 8 * k.granularity;
  c.moe.capacity_factor = k.capacity_factor;
  TransformerLM old(c);
  AdamW opt(old.params(), {});
  train_steps(old, opt, 3, 1);
  for (auto& [name, b] : old.buffers())  // biases away from zero: the new experts must still stay out
    if (name.ends_with("router.bias"))
      for (size_t i = 0; i < b->numel(); ++i) (*b)[i] = 0.3f * rng_normal(4, 4, i);
  ExpandOptions o;
  o.add_experts = 2;
  o.init = k.init;
  FreezeMask frozen;
  std::unique_ptr<TransformerLM> grown = expand_model(old, o, &frozen);
  EXPECT_EQ(grown->cfg.moe.num_local_experts, 6);
  EXPECT_GT(grown->num_params(), old.num_params());
  const int B = 3, L = c.max_position_embeddings, T = B * L, V = c.vocab_size;
  for (uint64_t draw = 0; draw < 3; ++draw) {
    std::vector<int32_t> x = tokens(T, V, 900 + draw);
    const Tensor want = old.forward_logits(x.data(), B, L);
    const Tensor& got = grown->forward_logits(x.data(), B, L);
    double scale = 0;
    for (size_t i = 0; i < want.numel(); ++i) scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
    for (size_t i = 0; i < want.numel(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5 * scale + 1e-6) << "logit " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Routers, ExpandPreserves,
    ::testing::Values(ExpandCase{"topk_softmax", "topk_softmax"}, ExpandCase{"softmax_topk", "softmax_topk"},
                      ExpandCase{"noisy_topk", "noisy_topk"}, ExpandCase{"sigmoid_bias", "sigmoid_bias"},
                      ExpandCase{"base", "base"}, ExpandCase{"sbase", "sbase"}, ExpandCase{"reinforce", "reinforce"},
                      ExpandCase{"expert_choice", "expert_choice"},
                      ExpandCase{"shared_and_gate", "topk_softmax", 1},
                      ExpandCase{"granularity_2", "softmax_topk", 0, 2},
                      ExpandCase{"capacity_1_25", "topk_softmax", 0, 1, 1.25f},
                      ExpandCase{"copied_experts", "topk_softmax", 0, 1, 0.f, ExpertInit::copy}),
    [](const auto& tp) { return std::string(tp.param.name); });

void expect_error(const std::function<void()>& f, const std::string& words) {
  try {
    f();
    FAIL() << "no error; expected one naming: " << words;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(words), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << "one line: " << what;
  }
}

TEST(Expand, RefusesWhatItCannotGrow) {
  ExpandOptions o;
  o.add_experts = 2;
  ModelConfig dense = tiny("topk_softmax");
  dense.ffn = FfnKind::dense;
  expect_error([&] { expanded_config(dense, o); }, "model.ffn = \"dense\"");
  ModelConfig peer = tiny("topk_softmax");
  peer.ffn = FfnKind::peer;
  expect_error([&] { expanded_config(peer, o); }, "model.ffn = \"peer\"");
  expect_error([&] { expanded_config(tiny("hash"), o); }, "router \"hash\" has no router rows");
  ModelConfig grouped = tiny("topk_softmax");
  grouped.moe.n_group = 2;
  expect_error([&] { expanded_config(grouped, o); }, "n_group = 2");
  for (int n : {0, -3}) {
    o.add_experts = n;
    expect_error([&] { expanded_config(tiny("topk_softmax"), o); }, "--add-experts = " + std::to_string(n));
  }
}

// Training the expanded model with its freeze mask: frozen rows and their moments stay bit-identical,
// the new experts and router rows and the unfrozen parameters move, and no gradient of a frozen row
// counts in the norm.
TEST(Expand, FrozenRowsAndMomentsStayBitIdentical) {
  ModelConfig c = tiny("topk_softmax");
  c.moe.n_shared_experts = 1;
  TransformerLM old(c);
  AdamW old_opt(old.params(), {});
  train_steps(old, old_opt, 4, 2);
  ExpandOptions o;
  o.add_experts = 2;
  o.entry_steps = 1;  // the new experts are chosen from the second step on
  FreezeMask frozen;
  std::unique_ptr<TransformerLM> m = expand_model(old, o, &frozen);
  AdamW opt(m->params(), {});
  std::map<std::string, Tensor*> old_state;
  for (auto& [n, t] : old_opt.state()) old_state[n] = t;
  for (auto& [n, t] : opt.state()) *t = grow_rows_zero(*old_state.at(n), t->shape());
  opt.set_steps(old_opt.steps());
  opt.set_freeze(frozen);
  // Default scope (experts+router): old experts' and router rows, the shared experts.
  const std::string l0 = "model.layers.0.mlp.";
  ASSERT_EQ(frozen.at(l0 + "experts.w1"), (std::vector<RowRange>{{0, 4}}));
  ASSERT_EQ(frozen.at(l0 + "router.weight"), (std::vector<RowRange>{{0, 4}}));
  ASSERT_EQ(frozen.at(l0 + "shared_experts.w2"), (std::vector<RowRange>{{0, 1}}));
  EXPECT_FALSE(frozen.count("model.layers.0.self_attn.q_proj.weight"));
  std::map<std::string, Tensor> before;
  for (const Param& p : m->params()) before[p.name] = *p.value;
  std::map<std::string, Tensor> moments_before;
  for (auto& [n, t] : opt.state()) moments_before[n] = *t;
  train_steps(*m, opt, 5, 3, &frozen);
  auto rows_equal = [](const Tensor& a, const Tensor& b, int64_t r0, int64_t r1) {
    const size_t w = a.numel() / static_cast<size_t>(a.dim(0));
    return std::memcmp(a.data() + r0 * w, b.data() + r0 * w, sizeof(float) * w * static_cast<size_t>(r1 - r0)) == 0;
  };
  for (const Param& p : m->params()) {
    const Tensor& b = before.at(p.name);
    if (auto it = frozen.find(p.name); it != frozen.end()) {
      for (const auto& [r0, r1] : it->second) {
        EXPECT_TRUE(rows_equal(*p.value, b, r0, r1)) << p.name << " rows " << r0 << ".." << r1 << " moved";
        for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
          Tensor* mom = nullptr;
          for (auto& [n, t] : opt.state())
            if (n == p.name + suffix) mom = t;
          ASSERT_NE(mom, nullptr);
          EXPECT_TRUE(rows_equal(*mom, moments_before.at(p.name + suffix), r0, r1)) << p.name << suffix << " moved";
        }
        if (r1 < p.value->dim(0)) {
          EXPECT_FALSE(rows_equal(*p.value, b, r1, p.value->dim(0))) << p.name << ": new rows did not move";
        }
      }
    } else {
      EXPECT_FALSE(rows_equal(*p.value, b, 0, p.value->dim(0))) << p.name << " (trainable) did not move";
    }
  }
  // The moments were carried over from the old model (not zero), so "kept" means something.
  double s = 0;
  const Tensor& v = moments_before.at(l0 + "experts.w1.exp_avg_sq");
  for (size_t i = 0; i < v.numel() / 6 * 4; ++i) s += v[i];
  EXPECT_GT(s, 0.0);
  // A mask that does not fit the model is refused, naming the parameter.
  FreezeMask wrong = {{"model.layers.0.mlp.experts.w1", {{0, 9}}}};
  EXPECT_THROW(opt.set_freeze(wrong), Error);
  FreezeMask unknown = {{"model.nope", {{0, 1}}}};
  EXPECT_THROW(opt.set_freeze(unknown), Error);
}

// The model's objective with a teacher: CE + aux + λ·KL; its gradient w.r.t. the LM head and an
// expert weight against central differences.
TEST(Distill, ModelGradientMatchesFiniteDifferences) {
  ModelConfig c = tiny("softmax_topk");
  c.initializer_range = 0.5f;
  TransformerLM m(c), teacher_model(c);
  AdamW opt(teacher_model.params(), {});
  train_steps(teacher_model, opt, 3, 5);
  const int B = 2, L = 8, T = B * L;
  std::vector<int32_t> x = tokens(T, c.vocab_size, 71), y = tokens(T, c.vocab_size, 72);
  y[3] = -1;
  const Tensor teacher = teacher_model.forward_logits(x.data(), B, L);
  m.set_teacher(teacher.data(), 0.8f);
  auto J = [&] {
    m.forward(x.data(), y.data(), B, L, true, 0);
    return m.stats().ce + m.stats().aux + m.stats().distill;
  };
  m.zero_grad();
  J();
  EXPECT_GT(m.stats().distill, 0.0);
  m.backward();
  for (const std::string& name : {std::string("lm_head.weight"), std::string("model.layers.1.mlp.experts.w2")}) {
    Param* p = nullptr;
    std::vector<Param> ps = m.params();
    for (Param& q : ps)
      if (q.name == name) p = &q;
    ASSERT_NE(p, nullptr);
    for (size_t s = 0; s < 12; ++s) {
      const size_t i = static_cast<size_t>(rng_uniform(8, 8, s) * static_cast<float>(p->value->numel())) % p->value->numel();
      const float orig = (*p->value)[i];
      const double eps = 1e-2;
      (*p->value)[i] = orig + static_cast<float>(eps);
      const double jp = J();
      (*p->value)[i] = orig - static_cast<float>(eps);
      const double jm = J();
      (*p->value)[i] = orig;
      const double fd = (jp - jm) / (2 * eps), an = (*p->grad)[i];
      EXPECT_NEAR(an, fd, 2e-3 + 3e-2 * std::max(std::fabs(fd), std::fabs(an))) << name << "[" << i << "]";
    }
  }
}

}  // namespace
}  // namespace moe
