// The transformer LM: finite differences of cross-entropy + balance losses w.r.t. every parameter
// (dense and MoE blocks, tied and untied head), parameter accounting, and training that lowers the
// loss with AdamW.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "infer/generate.h"
#include "model/dense_ffn.h"
#include "model/transformer.h"
#include "moe/moe_layer.h"
#include "nn/attention_core.h"
#include "nn/cross_entropy.h"
#include "peer/peer_layer.h"
#include "train/adamw.h"
#include "train/run_config.h"

namespace moe {
namespace {

ModelConfig tiny(bool tied, const std::string& router) {
  ModelConfig c;
  c.vocab_size = 24;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.intermediate_size = 12;
  c.max_position_embeddings = 8;
  c.tie_word_embeddings = tied;
  c.first_k_dense_replace = 1;
  c.initializer_range = 0.3f;
  c.moe.moe_intermediate_size = 8;
  c.moe.num_local_experts = 4;
  c.moe.num_experts_per_tok = 2;
  c.moe.router = parse_enum<RouterKind>(router, "router");
  c.moe.router_init_std = 0.5f;
  c.moe.router_aux_loss_coef = 0.1f;
  c.moe.n_shared_experts = 1;
  return c;
}

std::vector<int32_t> tokens_for(int n, int V, uint64_t stream) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>(rng_uniform(3, stream, static_cast<uint64_t>(i)) * static_cast<float>(V)) % V;
  return t;
}

// How far a rounded model's logits moved: the largest |got − ref| and the largest |ref|.
struct Moved {
  double diff = 0.0, mag = 0.0;
};
Moved moved_from(const Tensor& got, const Tensor& ref) {
  Moved m;
  for (size_t i = 0; i < ref.numel(); ++i) {
    m.diff = std::max(m.diff, static_cast<double>(std::fabs(got[i] - ref[i])));
    m.mag = std::max(m.mag, static_cast<double>(std::fabs(ref[i])));
  }
  return m;
}

// Prefills the first `prefill` tokens of tok into a fresh cache, then feeds the rest one at a time:
// the logits after each equal the full forward's row at that position (within 1e-4).
void expect_decode_matches(TransformerLM& model, const std::vector<int32_t>& tok, int prefill, const Tensor& full) {
  const int V = model.cfg.vocab_size, L = static_cast<int>(tok.size());
  model.reset_cache();
  const float* z = model.decode(tok.data(), prefill);
  for (int pos = prefill - 1; pos < L; ++pos) {
    if (pos >= prefill) z = model.decode(&tok[static_cast<size_t>(pos)], 1);
    for (int v = 0; v < V; ++v) ASSERT_NEAR(z[v], full[static_cast<size_t>(pos) * V + v], 1e-4) << "position " << pos;
  }
}

// tiny() with every row length a multiple of 32 (Q8_0's block), a context of 16.
ModelConfig tiny_packable(bool tied) {
  ModelConfig c = tiny(tied, "topk_softmax");
  c.vocab_size = 40;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.moe.moe_intermediate_size = 32;
  c.max_position_embeddings = 16;
  return c;
}

struct ModelCase {
  const char* name;
  bool tied;
  const char* router;
  bool hf_features = false;  // q/k/v biases, QK-norm, GraniteMoE's multipliers (what imported models use)
  int L = 6;                 // sequence length: above 24, attention computes its causal blocks apart
};

ModelConfig case_config(const ModelCase& mc) {
  ModelConfig c = tiny(mc.tied, mc.router);
  if (mc.hf_features) {
    c.attention_bias = true;
    c.qk_norm = QkNorm::head;
    c.embedding_multiplier = 2.f;
    c.residual_multiplier = 0.7f;
    c.attention_multiplier = 0.3f;
    c.logits_scaling = 1.8f;
  }
  c.max_position_embeddings = std::max(c.max_position_embeddings, mc.L);
  return c;
}

// Biases and norm weights away from their initial 0 and 1, so that their gradients are tested.
void perturb_attention(TransformerLM& model) {
  for (auto& b : model.blocks) {
    for (Tensor* t : {&b.attn.bq, &b.attn.bk, &b.attn.bv}) fill_normal(t->data(), t->numel(), 9, t->numel(), 0.f, 0.2f);
    for (RMSNorm* n : {&b.attn.q_norm, &b.attn.k_norm}) fill_normal(n->w.data(), n->w.numel(), 10, n->w.numel(), 1.f, 0.3f);
  }
}

void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

class ModelGradient : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ModelGradient, MatchesFiniteDifferences) {
  const ModelConfig c = case_config(GetParam());
  TransformerLM model(c);
  perturb_attention(model);
  const int B = 2, L = GetParam().L, T = B * L;
  std::vector<int32_t> tok = tokens_for(T, c.vocab_size, 1), tgt = tokens_for(T, c.vocab_size, 2);
  tgt[3] = kIgnoreIndex;
  model.zero_grad();
  model.forward(tok.data(), tgt.data(), B, L, true, 0);
  model.backward();
  auto routes = [&] {
    std::vector<int32_t> r;
    for (auto& b : model.blocks)
      if (const MoeLayer* m = b.ffn_as<MoeLayer>()) r.insert(r.end(), m->routing().expert.begin(), m->routing().expert.end());
    return r;
  };
  const std::vector<int32_t> base = routes();
  auto J = [&] { return model.forward(tok.data(), tgt.data(), B, L, true, 0) + model.stats().aux; };
  const double eps = 1e-2;
  int checked = 0;
  for (Param& p : model.params()) {
    const Tensor grad = *p.grad;
    const size_t n = p.value->numel();
    for (size_t s = 0; s < std::min<size_t>(n, 6); ++s) {
      const size_t i = static_cast<size_t>(rng_uniform(8, static_cast<uint64_t>(checked), s) * static_cast<float>(n)) % n;
      const float orig = (*p.value)[i];
      (*p.value)[i] = orig + static_cast<float>(eps);
      const double jp = J();
      const bool same_p = routes() == base;
      (*p.value)[i] = orig - static_cast<float>(eps);
      const double jm = J();
      const bool same_m = routes() == base;
      (*p.value)[i] = orig;
      if (!same_p || !same_m) continue;
      const double fd = (jp - jm) / (2 * eps), an = grad[i];
      EXPECT_NEAR(an, fd, 2e-3 + 3e-2 * std::max(std::fabs(fd), std::fabs(an))) << p.name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 60);
}

INSTANTIATE_TEST_SUITE_P(Models, ModelGradient,
                         ::testing::Values(ModelCase{"untied_topk_softmax", false, "topk_softmax"},
                                           ModelCase{"tied_sigmoid_bias", true, "sigmoid_bias"},
                                           ModelCase{"hf_features_softmax_topk", false, "softmax_topk", true},
                                           ModelCase{"long_sequences_three_causal_blocks", false, "topk_softmax", false, 70}),
                         [](const ::testing::TestParamInfo<ModelCase>& pi) { return std::string(pi.param.name); });

// Every parameter gradient and the loss against tests/torch_ref/model_ref.py (float64 autograd).
TEST_P(ModelGradient, MatchesPyTorch) {
  const ModelConfig c = case_config(GetParam());
  TransformerLM model(c);
  perturb_attention(model);
  const int B = 2, L = GetParam().L, T = B * L;
  std::vector<int32_t> tok = tokens_for(T, c.vocab_size, 1), tgt = tokens_for(T, c.vocab_size, 2);
  tgt[3] = kIgnoreIndex;
  if (Tensor* bias = model.blocks[1].ffn_as<MoeLayer>()->router->selection_bias()) fill_normal(bias->data(), bias->numel(), 4, 4, 0.f, 0.1f);
  model.zero_grad();
  const double ce = model.forward(tok.data(), tgt.data(), B, L, true, 0);
  model.backward();
  TensorFile in;
  RunConfig rc;
  rc.model = c;
  in.metadata["model"] = nlohmann::json::parse(run_config_to_json(rc))["model"].dump();
  in.metadata["moe"] = model.blocks[1].ffn_as<MoeLayer>()->cfg.to_json();
  in.metadata["B"] = std::to_string(B);
  in.metadata["L"] = std::to_string(L);
  Tensor tt({T}), tg({T});
  for (int i = 0; i < T; ++i) {
    tt[i] = static_cast<float>(tok[i]);
    tg[i] = static_cast<float>(tgt[i]);
  }
  in.tensors["tokens"] = tt;
  in.tensors["targets"] = tg;
  for (Param& p : model.params()) in.tensors[p.name] = *p.value;
  if (Tensor* bias = model.blocks[1].ffn_as<MoeLayer>()->router->selection_bias()) in.tensors["model.layers.1.mlp.router.bias"] = *bias;
  // Named after the case: ctest runs the cases in parallel.
  const std::string base = ::testing::TempDir() + "/model_" + GetParam().name;
  const std::string case_path = base + ".safetensors", out_path = base + ".out.safetensors";
  save_safetensors(case_path, in);
  const std::string cmd = std::string(MOE_TORCH_PYTHON) + " " + MOE_SOURCE_DIR + "/tests/torch_ref/model_ref.py " + case_path + " " + out_path;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  TensorFile ref = load_safetensors(out_path);
  EXPECT_NEAR(ce + model.stats().aux, ref.tensors.at("loss")[0], 1e-5);
  for (Param& p : model.params()) {
    const Tensor& want = ref.tensors.at("grad." + p.name);
    double scale = 0;
    for (size_t i = 0; i < want.numel(); ++i) scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
    for (size_t i = 0; i < want.numel(); ++i)
      ASSERT_NEAR((*p.grad)[i], want[i], 1e-4 * std::fabs(want[i]) + 1e-5 * scale) << p.name << "[" << i << "]";
  }
}

// A model with a PEER FFN in block 1 (block 0 dense): finite differences of the whole objective for
// the dense parameters and the retrieved rows of the tables; decoding with the KV cache equals the
// full forward (eval mode: BatchNorm's running statistics); parameters and FLOPs are accounted.
ModelConfig tiny_peer() {
  ModelConfig c = tiny(false, "topk_softmax");
  c.ffn = FfnKind::peer;
  c.sparse_layers = {1};
  c.peer.n_keys = 6;
  c.peer.heads = 2;
  c.peer.top_k = 3;
  c.peer.d_key = 4;
  return c;
}

TEST(PeerModel, MatchesFiniteDifferences) {
  const ModelConfig c = tiny_peer();
  TransformerLM model(c);
  ASSERT_TRUE(model.blocks[1].ffn_as<PeerLayer>() && model.blocks[0].ffn_as<DenseFfn>());
  const int B = 2, L = 6, T = B * L;
  std::vector<int32_t> tok = tokens_for(T, c.vocab_size, 1), tgt = tokens_for(T, c.vocab_size, 2);
  PeerLayer& peer = *model.blocks[1].ffn_as<PeerLayer>();
  const Tensor rm = peer.running_mean, rv = peer.running_var;
  auto J = [&] {
    peer.running_mean = rm;  // training forwards move the running statistics; J must not depend on that
    peer.running_var = rv;
    return model.forward(tok.data(), tgt.data(), B, L, true, 0);
  };
  model.zero_grad();
  J();
  model.backward();
  const std::vector<int32_t> base = peer.experts();
  const double eps = 1e-2;
  int checked = 0;
  auto check = [&](const std::string& name, Tensor& value, size_t i, double an) {
    const float orig = value[i];
    value[i] = orig + static_cast<float>(eps);
    const double jp = J();
    const bool same_p = peer.experts() == base;
    value[i] = orig - static_cast<float>(eps);
    const double jm = J();
    const bool same_m = peer.experts() == base;
    value[i] = orig;
    if (!same_p || !same_m) return;
    const double fd = (jp - jm) / (2 * eps);
    EXPECT_NEAR(an, fd, 2e-3 + 3e-2 * std::max(std::fabs(fd), std::fabs(an))) << name << "[" << i << "]";
    ++checked;
  };
  for (Param& p : model.params()) {
    const Tensor grad = *p.grad;
    for (size_t s = 0; s < std::min<size_t>(p.value->numel(), 4); ++s) {
      const size_t i = static_cast<size_t>(rng_uniform(8, static_cast<uint64_t>(checked), s) * static_cast<float>(p.value->numel())) % p.value->numel();
      check(p.name, *p.value, i, grad[i]);
    }
  }
  for (SparseParam& p : model.sparse_params()) {
    const SparseRows g = *p.grad;
    ASSERT_FALSE(g.rows.empty()) << p.name;
    const size_t w = static_cast<size_t>(p.value->dim(1));
    for (size_t r = 0; r < std::min<size_t>(g.rows.size(), 3); ++r)
      for (size_t j = 0; j < w; j += 3) check(p.name, *p.value, static_cast<size_t>(g.rows[r]) * w + j, g.grad[r * w + j]);
  }
  EXPECT_GT(checked, 50);
}

TEST(PeerModel, KvCacheDecodingMatchesFullForwardAndAccounting) {
  ModelConfig c = tiny_peer();
  c.max_position_embeddings = 16;
  TransformerLM model(c);
  const int L = 10;
  std::vector<int32_t> tok = tokens_for(L, c.vocab_size, 5);
  const Tensor full = model.forward_logits(tok.data(), 1, L);
  ASSERT_NO_FATAL_FAILURE(expect_decode_matches(model, tok, 4, full));
  int64_t listed = 0;
  for (const Param& p : model.params()) listed += static_cast<int64_t>(p.value->numel());
  for (const SparseParam& p : model.sparse_params()) listed += static_cast<int64_t>(p.value->numel());
  EXPECT_EQ(listed, model.num_params());
  const PeerLayer& peer = *model.blocks[1].ffn_as<PeerLayer>();
  EXPECT_EQ(peer.num_params() - peer.num_active_params(), 2LL * (36 - 2 * 3) * c.hidden_size);
  // FLOPs: the dense model's, less its block-1 FFN (6 per weight), plus the PEER layer's own count.
  ModelConfig dense = c;
  dense.ffn = FfnKind::dense;
  TransformerLM d(dense);
  EXPECT_NEAR(model.flops_per_token(), d.flops_per_token() - 6.0 * 3 * c.intermediate_size * c.hidden_size + peer.flops_per_token(), 1e-6);
  EXPECT_EQ(model.buffers().size(), 2u);
}

// Above the model, the FFNs are seen through the Ffn interface only: which experts each token went to
// (per block with experts: MoE's slots, PEER's h·k retrievals; none for a dense block), and the
// metrics of the last forward grouped by kind, each with its block.
TEST(Model, ExpertsAndMetricsPerSparseBlockThroughTheFfnInterface) {
  const int B = 2, L = 6, T = B * L;
  {
    const ModelConfig c = tiny(false, "topk_softmax");  // block 0 dense (first_k_dense_replace = 1), block 1 MoE
    TransformerLM model(c);
    std::vector<int32_t> tok = tokens_for(T, c.vocab_size, 1), tgt = tokens_for(T, c.vocab_size, 2);
    model.forward(tok.data(), tgt.data(), B, L, true, 0);
    const Routing& r = model.blocks[1].ffn_as<MoeLayer>()->routing();
    for (int t = 0; t < T; ++t) {
      const auto e = model.experts_of(t);
      ASSERT_EQ(e.size(), 1u);
      EXPECT_EQ(e[0].first, 1);
      EXPECT_EQ(e[0].second, std::vector<int32_t>(r.expert.begin() + t * 2, r.expert.begin() + t * 2 + 2));
    }
    std::string summary;
    const nlohmann::json m = model.metrics(&summary);
    ASSERT_EQ(m["moe"].size(), 1u);
    EXPECT_EQ(m["moe"][0]["layer"], 1);
    EXPECT_EQ(m["moe"][0]["load"].size(), 4u);
    EXPECT_FALSE(m.contains("peer"));
    EXPECT_EQ(summary.rfind("L1 max/mean ", 0), 0u) << summary;
    EXPECT_NEAR(model.stats().aux, model.blocks[1].ffn->loss(), 1e-12);  // only the MoE block has loss terms
  }
  {
    const ModelConfig c = tiny_peer();  // block 1 PEER, heads 2 × top-3
    TransformerLM model(c);
    std::vector<int32_t> tok = tokens_for(T, c.vocab_size, 1), tgt = tokens_for(T, c.vocab_size, 2);
    model.forward(tok.data(), tgt.data(), B, L, false, 0);
    const std::vector<int32_t>& idx = model.blocks[1].ffn_as<PeerLayer>()->experts();
    const auto e = model.experts_of(5);
    ASSERT_EQ(e.size(), 1u);
    EXPECT_EQ(e[0].first, 1);
    EXPECT_EQ(e[0].second, std::vector<int32_t>(idx.begin() + 5 * 6, idx.begin() + 6 * 6));
    const nlohmann::json m = model.metrics();
    EXPECT_TRUE(m["moe"].empty());  // always there, as metrics.jsonl has always had it
    ASSERT_EQ(m["peer"].size(), 1u);
    EXPECT_EQ(m["peer"][0]["layer"], 1);
    EXPECT_EQ(m["peer"][0]["pairs"], T * 6);
  }
}

TEST(PeerModel, ConfigErrorsNameTheField) {
  ModelConfig c = tiny_peer();
  c.sparse_layers = {2};
  EXPECT_THROW(
      {
        try {
          c.validate();
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("sparse_layers"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
  c = tiny_peer();
  c.peer.top_k = 9;
  try {
    c.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_k"), std::string::npos) << e.what();
  }
  c = tiny_peer();
  c.peer.d_key = 5;
  try {
    c.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("d_key"), std::string::npos) << e.what();
  }
}

TEST(Model, KvCacheDecodingMatchesFullForward) {
  ModelConfig c = tiny(false, "topk_softmax");
  c.max_position_embeddings = 16;
  TransformerLM model(c);
  const int L = 12;
  std::vector<int32_t> tok = tokens_for(L, c.vocab_size, 5);
  const Tensor full = model.forward_logits(tok.data(), 1, L);
  // Prefill 5 tokens, then one at a time: each step's logits equal the full forward's row.
  ASSERT_NO_FATAL_FAILURE(expect_decode_matches(model, tok, 5, full));
  EXPECT_EQ(model.cache_len(), L);
}

// Prompts of a causal block or more go through attention's fused core (nn/attention_core.h), with
// positions already cached before them: a prefill of 30 tokens, a second one of 40 after them, then
// one token at a time, each step's logits equal to the full forward's row.
TEST(Model, LongPrefillsMatchFullForward) {
  ModelConfig c = tiny(false, "topk_softmax");
  c.max_position_embeddings = 96;
  TransformerLM model(c);
  const int L = 90, V = c.vocab_size;
  std::vector<int32_t> tok = tokens_for(L, V, 6);
  const Tensor full = model.forward_logits(tok.data(), 1, L);
  model.reset_cache();
  int pos = 0;
  for (int n : {30, 40}) {
    static_assert(30 >= kCausalBlock, "the prefills must reach the fused core");
    const float* z = model.decode(&tok[static_cast<size_t>(pos)], n);
    pos += n;
    for (int v = 0; v < V; ++v) ASSERT_NEAR(z[v], full[static_cast<size_t>(pos - 1) * V + v], 1e-4) << "prefill to " << pos;
  }
  for (; pos < L; ++pos) {
    const float* z = model.decode(&tok[static_cast<size_t>(pos)], 1);
    for (int v = 0; v < V; ++v) ASSERT_NEAR(z[v], full[static_cast<size_t>(pos) * V + v], 1e-4) << "position " << pos;
  }
  EXPECT_EQ(model.cache_len(), L);
}

// An inference context longer than the training window (model.context_length, as imported models have):
// the KV cache and the RoPE tables grow while decoding (64 → 128 → 200 positions), and every step still
// equals the full forward, with the options imported models use.
TEST(Model, KvCacheGrowsToALongContext) {
  ModelConfig c = case_config({"hf", false, "softmax_topk", true});
  c.max_position_embeddings = 16;
  c.context_length = 200;
  TransformerLM model(c);
  perturb_attention(model);
  const int L = 190;
  std::vector<int32_t> tok = tokens_for(L, c.vocab_size, 6);
  const Tensor full = model.forward_logits(tok.data(), 1, L);
  ASSERT_NO_FATAL_FAILURE(expect_decode_matches(model, tok, 3, full));
  EXPECT_EQ(model.cache_len(), L);
}

// Decoding from packed weights (moe generate/eval --weights): after pack_weights, forward_logits and
// decode both multiply by the packed copies (fp32: the weights unchanged); they agree at every
// position (a prefill of 5, then one token at a time), tied head or not, for a model trained in fp32
// or in bf16 (whose bf16 GEMMs packing turns off). The packed model stays close to the fp32 one, and a
// token reads (4 − bytes per weight) fewer bytes for each packed weight it uses.
TEST(Model, PackedWeightsDecodeAsTheRoundedModel) {
  for (int variant = 0; variant < 3; ++variant) {
    const bool tied = variant == 1, bf16_model = variant == 2;
    for (WeightFormat f : {WeightFormat::fp32, WeightFormat::bf16, WeightFormat::q8_0}) {
      SCOPED_TRACE(std::string(name_of(f)) + (tied ? " tied" : " untied") + (bf16_model ? ", bf16 model" : ""));
      ModelConfig c = tiny_packable(tied);
      if (bf16_model) c.moe.precision = Precision::bf16;
      c.initializer_range = 0.1f;
      TransformerLM model(c);
      const int L = 12;
      const std::vector<int32_t> tok = tokens_for(L, c.vocab_size, 8);
      const Tensor ref = model.forward_logits(tok.data(), 1, L);
      const double fp32_bytes = model.decode_bytes(L);
      std::vector<Tensor> before;
      for (const Param& p : model.params()) before.push_back(*p.value);
      model.pack_weights(f);
      EXPECT_EQ(model.weight_format(), f);
      const Tensor full = model.forward_logits(tok.data(), 1, L);
      const auto [diff, mag] = moved_from(full, ref);
      if (f == WeightFormat::fp32 && !bf16_model) {
        const std::vector<Param> after = model.params();
        for (size_t i = 0; i < after.size(); ++i)
          EXPECT_EQ(std::memcmp(after[i].value->data(), before[i].data(), sizeof(float) * before[i].numel()), 0)
              << "packing in fp32 changed " << after[i].name;
        // Experts given at most 8 rows read packed weights by dot products (core/packed.h), which sum
        // in another order than sgemm: the logits agree to fp32 rounding, not bit for bit.
        EXPECT_LT(diff, 1e-6 * mag) << "packing in fp32 changed the logits";
      } else {  // a bf16 model packed in fp32 runs its GEMMs in fp32 now
        EXPECT_GT(diff, 0.0) << "packing changed nothing";
        EXPECT_LT(diff, (f == WeightFormat::q8_0 ? 0.03 : 0.01) * mag);
      }
      ASSERT_NO_FATAL_FAILURE(expect_decode_matches(model, tok, 5, full));
      // Packed and read by one token: every block's four projections, the dense FFN, the k routed and
      // the shared expert of the MoE block, and the head.
      double packed = static_cast<double>(c.vocab_size) * c.hidden_size;
      for (const auto& b : model.blocks) {
        packed += static_cast<double>(b.attn.wq.numel() + b.attn.wk.numel() + b.attn.wv.numel() + b.attn.wo.numel());
        if (const DenseFfn* dense = b.ffn_as<DenseFfn>()) packed += 3.0 * dense->bank.h * dense->bank.d;
        if (const MoeLayer* m = b.ffn_as<MoeLayer>())
          packed += 3.0 * (c.moe.num_experts_per_tok * m->experts.h + m->shared.E * m->shared.h) * m->experts.d;
      }
      EXPECT_NEAR(fp32_bytes - model.decode_bytes(L), (4.0 - bytes_per_weight(f)) * packed, 1e-6 * fp32_bytes);
    }
  }
}

// A bf16 KV cache (moe generate/eval --kv-cache bf16): forward_logits then runs the model with every
// block's keys and values rounded to bf16 and decode reads them from the bf16 cache; they agree at
// every position (prompts of 5 and of a causal block, then one token at a time), with the features
// imported models use. The rounding moves the logits a little, and each cached value a token reads
// costs 2 bytes instead of 4.
TEST(Model, Bf16KvCacheDecodesAsTheRoundedModel) {
  ModelConfig c = case_config({"hf", false, "softmax_topk", true});
  c.max_position_embeddings = 48;
  TransformerLM model(c);
  perturb_attention(model);
  const int L = 40;
  const std::vector<int32_t> tok = tokens_for(L, c.vocab_size, 12);
  const Tensor ref = model.forward_logits(tok.data(), 1, L);
  const double fp32_bytes = model.decode_bytes(L);
  model.reset_cache();
  model.decode(tok.data(), 3);
  model.set_kv_cache(Precision::bf16);
  EXPECT_EQ(model.cache_len(), 0) << "set_kv_cache drops the caches";
  EXPECT_EQ(model.kv_cache(), Precision::bf16);
  const Tensor full = model.forward_logits(tok.data(), 1, L);
  const auto [diff, mag] = moved_from(full, ref);
  EXPECT_GT(diff, 0.0) << "the bf16 cache's rounding changed nothing";
  EXPECT_LT(diff, 0.01 * mag);
  for (int prefill : {5, kCausalBlock + 2}) {
    SCOPED_TRACE("prefill " + std::to_string(prefill));
    ASSERT_NO_FATAL_FAILURE(expect_decode_matches(model, tok, prefill, full));
  }
  const double kv_values = 2.0 * c.num_hidden_layers * L * c.attention().kv_heads() * c.attention().hd();
  EXPECT_EQ(fp32_bytes - model.decode_bytes(L), 2.0 * kv_values);
}

// Generation past the context of 8: rolling the cache prefills the prompt once and then shifts (the
// first `keep` positions stay); prefilling again re-feeds half the window at each overflow. Until the
// first overflow both give the same tokens. A keep beyond half the context is an error naming it.
TEST(Generate, ContextShiftRollsOrPrefillsAgain) {
  ModelConfig c = tiny(false, "topk_softmax");
  c.max_position_embeddings = 8;
  TransformerLM model(c);
  const std::vector<int32_t> prompt = tokens_for(3, c.vocab_size, 9);
  SampleOptions o;
  o.max_tokens = 30;
  o.temperature = 0.f;
  GenerateTimings rolled, again, kept;
  const std::vector<int32_t> a = generate(model, prompt, o, {}, &rolled);
  o.keep = 2;
  const std::vector<int32_t> k = generate(model, prompt, o, {}, &kept);
  o.shift = ContextShift::reprefill;
  const std::vector<int32_t> b = generate(model, prompt, o, {}, &again);
  ASSERT_EQ(a.size(), 30u);
  ASSERT_EQ(b.size(), 30u);
  ASSERT_EQ(k.size(), 30u);
  EXPECT_EQ(rolled.prefill_tokens, 3);
  EXPECT_EQ(kept.prefill_tokens, 3);
  // The prompt, then 29 tokens fed one at a time in a window of 8: the first overflow at the 6th, then a
  // shift every 4 (discarding 4; with keep 2, every 3), a new prefill of 4 tokens every 5.
  EXPECT_EQ(rolled.shifts, 6);
  EXPECT_EQ(kept.shifts, 8);
  EXPECT_EQ(again.shifts, 0);
  EXPECT_EQ(again.prefill_tokens, 3 + 4 * 5);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(a[i], b[i]) << i;
    EXPECT_EQ(a[i], k[i]) << i;
  }
  o.shift = ContextShift::roll;
  o.keep = 5;
  try {
    generate(model, prompt, o);
    FAIL() << "keep 5 of a context of 8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("keep = 5"), std::string::npos) << e.what();
  }
}

// Batched decoding: three sequences' prompts (lengths 5, 2, 7) prefilled in one pass, then one pass
// per step with a token of each; every sequence's logits equal those of decoding it alone, packed
// weights or not (the passes read each matrix once for all the rows). Q8_0 rounds every activation to
// 8 bits, so a row through the panel path (more than 8 rows: sgemm on the rounded values) and the same
// row through the dot products (8 or fewer) can round an activation one step apart downstream, which
// moved a logit by 1e-2 here: its prompts (3, 2, 3) fill one pass of dot products, whose rows are those
// of each row alone bit for bit (test_core: Packed.MatmulEqualsTheProductWithTheHeldValues).
TEST(Model, BatchedDecodingMatchesEachSequenceAlone) {
  for (bool packed : {false, true}) {
    SCOPED_TRACE(packed ? "packed q8_0" : "fp32");
    const ModelConfig c = tiny_packable(false);
    TransformerLM model(c);
    if (packed) model.pack_weights(WeightFormat::q8_0);
    const int lens[3] = {packed ? 3 : 5, 2, packed ? 3 : 7}, steps = 6;
    std::vector<std::vector<int32_t>> tok(3);
    for (int s = 0; s < 3; ++s) tok[static_cast<size_t>(s)] = tokens_for(lens[s] + steps, c.vocab_size, 20 + static_cast<uint64_t>(s));
    // Alone: each sequence's logits after its prompt and after each of the following tokens.
    std::vector<std::vector<std::vector<float>>> alone(3);
    for (int s = 0; s < 3; ++s) {
      const std::vector<int32_t>& t = tok[static_cast<size_t>(s)];
      model.reset_cache();
      const float* z = model.decode(t.data(), lens[s]);
      alone[static_cast<size_t>(s)].emplace_back(z, z + c.vocab_size);
      for (int i = 0; i < steps; ++i) {
        z = model.decode(&t[static_cast<size_t>(lens[s] + i)], 1);
        alone[static_cast<size_t>(s)].emplace_back(z, z + c.vocab_size);
      }
    }
    model.reset_cache(3);
    std::vector<int32_t> feed;
    for (int s = 0; s < 3; ++s) feed.insert(feed.end(), tok[static_cast<size_t>(s)].begin(), tok[static_cast<size_t>(s)].begin() + lens[s]);
    const Tensor* z = &model.decode(feed.data(), {{0, lens[0]}, {1, lens[1]}, {2, lens[2]}});
    Tensor ordered({3, c.vocab_size});  // a step's logits in sequence order
    for (int i = 0; i <= steps; ++i) {
      ASSERT_EQ(z->dim(0), 3);
      for (int s = 0; s < 3; ++s)
        for (int v = 0; v < c.vocab_size; ++v)
          ASSERT_NEAR((*z)[static_cast<size_t>(s) * c.vocab_size + v], alone[static_cast<size_t>(s)][static_cast<size_t>(i)][static_cast<size_t>(v)], 1e-4)
              << "sequence " << s << " step " << i;
      if (i == steps) break;
      // The next token of each, sequences in another order (2, 0, 1).
      feed = {tok[2][static_cast<size_t>(lens[2] + i)], tok[0][static_cast<size_t>(lens[0] + i)], tok[1][static_cast<size_t>(lens[1] + i)]};
      const Tensor& zz = model.decode(feed.data(), {{2, 1}, {0, 1}, {1, 1}});
      for (int r = 0; r < 3; ++r) {
        const int s = r == 0 ? 2 : r - 1;
        std::copy(zz.data() + static_cast<size_t>(r) * c.vocab_size, zz.data() + static_cast<size_t>(r + 1) * c.vocab_size,
                  ordered.data() + static_cast<size_t>(s) * c.vocab_size);
      }
      z = &ordered;
    }
    for (int s = 0; s < 3; ++s) EXPECT_EQ(model.cache_len(s), lens[s] + steps);
  }
}

// Batched generation gives every prompt what generating it alone gives, greedy and sampled, through
// context shifts of either kind (a window of 8, 20 tokens); a sequence that meets the stop token ends
// there while the others go on.
TEST(Generate, BatchedPromptsContinueAsAlone) {
  ModelConfig c = tiny(false, "topk_softmax");
  c.max_position_embeddings = 8;
  TransformerLM model(c);
  const std::vector<std::vector<int32_t>> prompts = {tokens_for(3, c.vocab_size, 30), tokens_for(1, c.vocab_size, 31),
                                                     tokens_for(5, c.vocab_size, 32)};
  for (ContextShift shift : {ContextShift::roll, ContextShift::reprefill}) {
    for (float temperature : {0.f, 0.8f}) {
      SCOPED_TRACE(std::string(name_of(shift)) + " temperature " + std::to_string(temperature));
      SampleOptions o;
      o.max_tokens = 20;
      o.temperature = temperature;
      o.shift = shift;
      GenerateTimings tm;
      const std::vector<std::vector<int32_t>> together = generate(model, prompts, o, {}, &tm);
      ASSERT_EQ(together.size(), 3u);
      for (size_t s = 0; s < 3; ++s) EXPECT_EQ(together[s], generate(model, prompts[s], o)) << "prompt " << s;
      if (shift == ContextShift::roll) {  // the prompts' 9 tokens in one prefill, then 19 fed to each sequence
        EXPECT_EQ(tm.prefill_tokens, 9);
        EXPECT_EQ(tm.decode_tokens, 3 * 19);
        EXPECT_GT(tm.shifts, 3 * 2);
      } else {
        EXPECT_GT(tm.prefill_tokens, 9 + 3 * 4);
      }
      // Stop at sequence 1's fourth token: it ends there, the others run to 20.
      o.stop_token = together[1][3];
      const std::vector<std::vector<int32_t>> stopped = generate(model, prompts, o);
      const auto first = std::find(together[1].begin(), together[1].end(), o.stop_token);
      EXPECT_EQ(stopped[1], std::vector<int32_t>(together[1].begin(), first + 1));
      for (size_t s : {0u, 2u}) {
        const auto at = std::find(together[s].begin(), together[s].end(), o.stop_token);
        EXPECT_EQ(stopped[s], std::vector<int32_t>(together[s].begin(), at == together[s].end() ? at : at + 1));
      }
    }
  }
}

// A model built to be loaded draws no random weights (the load overwrites them all): every matrix
// is zero until then, while the same model built to train has them drawn; norms start at 1 either way.
TEST(Model, BuiltForLoadingDrawsNoWeights) {
  const ModelConfig c = tiny(false, "topk_softmax");
  TransformerLM loaded(c, ParamInit::for_loading), drawn(c);
  auto abs_sum = [](const Tensor& t) {
    double s = 0.0;
    for (size_t i = 0; i < t.numel(); ++i) s += std::abs(t[i]);
    return s;
  };
  auto lp = loaded.params(), dp = drawn.params();
  ASSERT_EQ(lp.size(), dp.size());
  for (size_t i = 0; i < lp.size(); ++i) {
    SCOPED_TRACE(lp[i].name);
    if (lp[i].name.find("norm") != std::string::npos) {
      EXPECT_EQ(abs_sum(*lp[i].value), abs_sum(*dp[i].value));
    } else {
      EXPECT_EQ(abs_sum(*lp[i].value), 0.0);
      EXPECT_GT(abs_sum(*dp[i].value), 0.0);
    }
  }
  // The skip ends with the constructor: a model built afterwards draws again, the same weights.
  TransformerLM again(c);
  EXPECT_EQ(again.embed.w[0], drawn.embed.w[0]);
}

TEST(Model, ParameterAccounting) {
  for (bool tied : {false, true}) {
    TransformerLM model(tiny(tied, "topk_softmax"));
    int64_t listed = 0;
    for (const Param& p : model.params()) listed += static_cast<int64_t>(p.value->numel());
    EXPECT_EQ(listed, model.num_params());
    EXPECT_LT(model.num_active_params(), model.num_params());
    EXPECT_GT(model.flops_per_token(), 6.0 * static_cast<double>(model.num_active_params() - model.num_embedding_params()));
  }
}

TEST(Model, LossFallsOver50StepsWithAdamW) {
  ModelConfig c = tiny(false, "topk_softmax");
  c.initializer_range = 0.02f;
  c.moe.router_init_std = 0.02f;
  TransformerLM model(c);
  AdamWConfig oc;
  oc.weight_decay = 0.0f;
  AdamW opt(model.params(), oc);
  // A learnable stream: token i+1 follows token i (mod V).
  const int B = 4, L = 8, T = B * L;
  std::vector<int32_t> tok(T), tgt(T);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < L; ++i) {
      tok[b * L + i] = (b * 5 + i) % c.vocab_size;
      tgt[b * L + i] = (b * 5 + i + 1) % c.vocab_size;
    }
  double first = 0, last = 0;
  for (int step = 0; step < 50; ++step) {
    model.zero_grad();
    const double loss = model.forward(tok.data(), tgt.data(), B, L, true, static_cast<uint64_t>(step));
    model.backward();
    clip_grad_norm(model.params(), 1.0);
    opt.step(1e-2f);
    if (step == 0) first = loss;
    last = loss;
  }
  EXPECT_NEAR(first, std::log(static_cast<double>(c.vocab_size)), 0.3);
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
}

}  // namespace
}  // namespace moe
