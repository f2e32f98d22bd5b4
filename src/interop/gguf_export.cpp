#include "interop/gguf_export.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "data/tokenizer.h"
#include "model/hf.h"
#include "train/checkpoint.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

// GGUF's metadata value types and ggml's tensor types (the numbers are the format's).
enum : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9 };
enum : uint32_t { kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ8_0 = 8, kGgmlBF16 = 30 };
constexpr size_t kAlign = 32;  // general.alignment's default
constexpr int kQ8Block = 32;

// A little-endian byte buffer with GGUF's encodings.
struct Bytes {
  std::string b;
  template <class T>
  void put(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    b += s;
  }
};

struct Meta {
  Bytes kv;
  uint64_t count = 0;
  void key(const std::string& k, uint32_t type) {
    kv.str(k);
    kv.put<uint32_t>(type);
    ++count;
  }
  void u32(const std::string& k, uint32_t v) { key(k, kU32), kv.put(v); }
  void f32(const std::string& k, float v) { key(k, kF32), kv.put(v); }
  void boolean(const std::string& k, bool v) { key(k, kBool), kv.put<uint8_t>(v ? 1 : 0); }
  void str(const std::string& k, const std::string& v) { key(k, kString), kv.str(v); }
  template <class T>
  void array(const std::string& k, uint32_t elem_type, const std::vector<T>& v, const std::function<void(const T&)>& put) {
    key(k, kArray);
    kv.put<uint32_t>(elem_type);
    kv.put<uint64_t>(v.size());
    for (const T& x : v) put(x);
  }
};

struct GgufTensor {
  std::string name;
  std::vector<int64_t> shape;  // numpy order (outermost first); GGUF stores it reversed (ne0 first)
  uint32_t type;
  std::function<void(float*)> fill;  // the values in numpy (row-major) order
  size_t numel() const {
    size_t n = 1;
    for (int64_t s : shape) n *= static_cast<size_t>(s);
    return n;
  }
  size_t bytes() const {
    switch (type) {
      case kGgmlF32: return 4 * numel();
      case kGgmlQ8_0: return numel() / kQ8Block * (2 + kQ8Block);
      default: return 2 * numel();
    }
  }
};

// llama.cpp's quantize_row_q8_0_ref: per block of 32, d = max|x|/127 stored as fp16, q = round(x/d).
void quantize_q8_0(const float* x, size_t n, std::string& out) {
  for (size_t b = 0; b < n; b += kQ8Block) {
    float amax = 0.f;
    for (int j = 0; j < kQ8Block; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
    const uint16_t dh = float_to_half(d);
    out.append(reinterpret_cast<const char*>(&dh), 2);
    for (int j = 0; j < kQ8Block; ++j) out += static_cast<char>(static_cast<int8_t>(std::roundf(x[b + j] * id)));
  }
}

// The rows of a q or k projection (heads·hd, d) reordered from Hugging Face's rotate-half pairs
// (i, i + hd/2) to the adjacent pairs (2i, 2i + 1) that llama.cpp's "llama" RoPE rotates: what its
// converter's permute() does.
void permute_rope_rows(const float* w, int heads, int hd, int d, float* out) {
  const int half = hd / 2;
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < half; ++i)
      for (int j = 0; j < 2; ++j)
        std::memcpy(out + (static_cast<size_t>(h) * hd + 2 * i + j) * d, w + (static_cast<size_t>(h) * hd + j * half + i) * d,
                    sizeof(float) * d);
}

}  // namespace

GgufSummary export_gguf(const std::string& ckpt, const std::string& path, GgufType type, bool allow_nonfinite) {
  if (fs::exists(path)) fail("moe export: " + path + " already exists; give another --out (nothing was written)");
  const RunConfig cfg = read_checkpoint_config(ckpt);
  const ModelConfig& c = cfg.model;
  const HfArch arch = hf_arch_of(c);
  if (arch != HfArch::mixtral)
    fail("moe export --format gguf: the model exports as " + std::string(name_of(arch)) +
         "; GGUF export writes Mixtral-style models (router topk_softmax, no shared experts, no QK-norm or biases) for now");
  if (!fs::exists(ckpt + "/tokenizer.model"))
    fail("moe export --format gguf: " + ckpt + " has no sentencepiece tokenizer.model, and a GGUF file carries its vocabulary");
  Tokenizer tok;
  tok.load(ckpt + "/tokenizer.model");
  if (tok.vocab_size() != c.vocab_size)
    fail("moe export --format gguf: " + ckpt + "/tokenizer.model has " + std::to_string(tok.vocab_size()) +
         " pieces but the model a vocabulary of " + std::to_string(c.vocab_size));
  LoadedRun run = load_run(ckpt, allow_nonfinite);
  std::map<std::string, const Tensor*> p;
  for (Param& q : run.model->params()) p[q.name] = q.value;

  const uint32_t wtype = type == GgufType::f32 ? kGgmlF32 : type == GgufType::f16 ? kGgmlF16
                         : type == GgufType::bf16 ? kGgmlBF16 : kGgmlQ8_0;
  const AttentionConfig at = c.attention();
  const int d = c.hidden_size, hd = at.hd(), H = c.num_attention_heads, KV = at.kv_heads();
  std::vector<GgufTensor> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool weight, std::function<void(float*)> fill) {
    GgufTensor t{name, std::move(shape), kGgmlF32, std::move(fill)};
    if (weight) t.type = wtype == kGgmlQ8_0 && t.shape.back() % kQ8Block != 0 ? kGgmlF32 : wtype;  // Q8_0 needs rows of 32k
    tensors.push_back(std::move(t));
  };
  auto copy = [&](const std::string& param) {
    const Tensor* t = p.at(param);
    return [t](float* dst) { std::memcpy(dst, t->data(), sizeof(float) * t->numel()); };
  };
  auto permuted = [&](const std::string& param, int heads) {
    const Tensor* t = p.at(param);
    return [t, heads, hd, d](float* dst) { permute_rope_rows(t->data(), heads, hd, d, dst); };
  };
  const MoeConfig m = c.moe_layer(0);
  const int64_t E = m.n_experts(), h = m.expert_hidden();
  add("token_embd.weight", {c.vocab_size, d}, true, copy("model.embed_tokens.weight"));
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".", s = "model.layers." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", {d}, false, copy(s + "input_layernorm.weight"));
    add(b + "attn_q.weight", {static_cast<int64_t>(H) * hd, d}, true, permuted(s + "self_attn.q_proj.weight", H));
    add(b + "attn_k.weight", {static_cast<int64_t>(KV) * hd, d}, true, permuted(s + "self_attn.k_proj.weight", KV));
    add(b + "attn_v.weight", {static_cast<int64_t>(KV) * hd, d}, true, copy(s + "self_attn.v_proj.weight"));
    add(b + "attn_output.weight", {d, static_cast<int64_t>(H) * hd}, true, copy(s + "self_attn.o_proj.weight"));
    add(b + "ffn_norm.weight", {d}, false, copy(s + "post_attention_layernorm.weight"));
    add(b + "ffn_gate_inp.weight", {E, d}, false, copy(s + "mlp.router.weight"));
    add(b + "ffn_gate_exps.weight", {E, h, d}, true, copy(s + "mlp.experts.w1"));
    add(b + "ffn_up_exps.weight", {E, h, d}, true, copy(s + "mlp.experts.w3"));
    add(b + "ffn_down_exps.weight", {E, d, h}, true, copy(s + "mlp.experts.w2"));
  }
  add("output_norm.weight", {d}, false, copy("model.norm.weight"));
  if (!c.tie_word_embeddings) add("output.weight", {c.vocab_size, d}, true, copy("lm_head.weight"));

  Meta meta;
  const std::string a = "llama";
  meta.str("general.architecture", a);
  meta.str("general.name", fs::path(ckpt).filename().string());
  meta.u32("general.alignment", kAlign);
  meta.u32("general.file_type", type == GgufType::f32 ? 0 : type == GgufType::f16 ? 1 : type == GgufType::bf16 ? 32 : 7);
  meta.u32(a + ".vocab_size", static_cast<uint32_t>(c.vocab_size));
  meta.u32(a + ".context_length", static_cast<uint32_t>(c.context()));
  meta.u32(a + ".embedding_length", static_cast<uint32_t>(d));
  meta.u32(a + ".block_count", static_cast<uint32_t>(c.num_hidden_layers));
  meta.u32(a + ".feed_forward_length", static_cast<uint32_t>(h));
  meta.u32(a + ".attention.head_count", static_cast<uint32_t>(H));
  meta.u32(a + ".attention.head_count_kv", static_cast<uint32_t>(KV));
  meta.u32(a + ".attention.key_length", static_cast<uint32_t>(hd));
  meta.u32(a + ".attention.value_length", static_cast<uint32_t>(hd));
  meta.u32(a + ".rope.dimension_count", static_cast<uint32_t>(hd));
  meta.f32(a + ".rope.freq_base", c.rope_theta);
  meta.f32(a + ".attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  meta.u32(a + ".expert_count", static_cast<uint32_t>(E));
  meta.u32(a + ".expert_used_count", static_cast<uint32_t>(m.k()));
  // The vocabulary: llama.cpp's "llama" tokenizer is sentencepiece's, pieces with their scores and kinds.
  std::vector<int32_t> ids(static_cast<size_t>(c.vocab_size));
  for (int i = 0; i < c.vocab_size; ++i) ids[static_cast<size_t>(i)] = i;
  meta.str("tokenizer.ggml.model", "llama");
  meta.array<int32_t>("tokenizer.ggml.tokens", kString, ids, [&](const int32_t& i) { meta.kv.str(tok.piece(i)); });
  meta.array<int32_t>("tokenizer.ggml.scores", kF32, ids, [&](const int32_t& i) { meta.kv.put<float>(tok.score(i)); });
  meta.array<int32_t>("tokenizer.ggml.token_type", kI32, ids, [&](const int32_t& i) {
    // llama.cpp's token types: 1 normal, 2 unknown, 3 control, 5 unused, 6 byte.
    static constexpr int32_t types[] = {1, 2, 3, 6, 5};
    meta.kv.put<int32_t>(types[static_cast<int>(tok.kind(i))]);
  });
  for (int i = 0; i < c.vocab_size; ++i)
    if (tok.kind(i) == Tokenizer::PieceKind::unknown) meta.u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(i));
  meta.boolean("tokenizer.ggml.add_bos_token", false);
  meta.boolean("tokenizer.ggml.add_eos_token", false);

  Bytes head;
  head.b = "GGUF";
  head.put<uint32_t>(3);
  head.put<uint64_t>(tensors.size());
  head.put<uint64_t>(meta.count);
  head.b += meta.kv.b;
  uint64_t offset = 0;
  for (const GgufTensor& t : tensors) {
    head.str(t.name);
    head.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (size_t i = t.shape.size(); i-- > 0;) head.put<uint64_t>(static_cast<uint64_t>(t.shape[i]));
    head.put<uint32_t>(t.type);
    head.put<uint64_t>(offset);
    offset += (t.bytes() + kAlign - 1) / kAlign * kAlign;
  }
  head.b.resize((head.b.size() + kAlign - 1) / kAlign * kAlign, '\0');
  AtomicFile f(path);
  f.write(head.b.data(), head.b.size());
  std::vector<float> x;
  std::string data;
  for (const GgufTensor& t : tensors) {
    x.assign(t.numel(), 0.f);
    t.fill(x.data());
    data.clear();
    if (t.type == kGgmlF32) {
      data.assign(reinterpret_cast<const char*>(x.data()), 4 * x.size());
    } else if (t.type == kGgmlQ8_0) {
      quantize_q8_0(x.data(), x.size(), data);
    } else {
      std::vector<uint16_t> half(x.size());
      if (t.type == kGgmlBF16) to_bf16(x.data(), half.data(), x.size());
      else for (size_t i = 0; i < x.size(); ++i) half[i] = float_to_half(x[i]);
      data.assign(reinterpret_cast<const char*>(half.data()), 2 * half.size());
    }
    MOE_CHECK(data.size() == t.bytes(), "gguf: tensor " + t.name + " has the wrong size");
    data.resize((data.size() + kAlign - 1) / kAlign * kAlign, '\0');
    f.write(data.data(), data.size());
  }
  f.commit();
  return {a, static_cast<int64_t>(tensors.size()), static_cast<int64_t>(fs::file_size(path)), run.state.step};
}

}  // namespace moe
