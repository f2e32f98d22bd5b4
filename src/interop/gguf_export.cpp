#include "interop/gguf_export.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/files.h"
#include "core/half.h"
#include "core/safetensors.h"
#include "data/bpe_tokenizer.h"
#include "data/chat_template.h"
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
    int8_t q[kQ8Block];
    const uint16_t dh = quantize_q8_0_block(x + b, q);
    out.append(reinterpret_cast<const char*>(&dh), 2);
    out.append(reinterpret_cast<const char*>(q), kQ8Block);
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

namespace {

// llama.cpp's name for each architecture, and whether its RoPE rotates adjacent pairs (LLAMA_ROPE_TYPE_NORM:
// q and k rows permuted) or the Hugging Face halves (NEOX: as they are).
struct GgufArch {
  const char* name;
  bool permute;
};
GgufArch gguf_arch(HfArch a) {
  switch (a) {
    case HfArch::mixtral: return {"llama", true};
    case HfArch::granitemoe: return {"granitemoe", true};
    case HfArch::qwen2_moe: return {"qwen2moe", false};
    case HfArch::qwen3_moe: return {"qwen3moe", false};
    case HfArch::olmoe: return {"olmoe", false};
    case HfArch::deepseek: return {"", false};
  }
  return {"", false};
}

// llama.cpp's name for a byte-level BPE's pre-tokenizer, by its regex.
std::string gguf_pre_tokenizer(const BpeTokenizer& bpe, const std::string& where) {
  static const std::string qwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  if (bpe.pattern() == qwen2) return "qwen2";
  if (bpe.pattern() == BpeTokenizer::gpt2_pattern()) return "gpt-2";
  fail("moe export --format gguf: " + where + " pre-tokenizes with a regex llama.cpp has no name for (it knows Qwen2's and "
       "GPT-2's here); the vocabulary cannot be written");
}

}  // namespace

GgufSummary export_gguf(const std::string& ckpt, const std::string& path, GgufType type, bool allow_nonfinite) {
  if (fs::exists(path)) fail("moe export: " + path + " already exists; give another --out (nothing was written)");
  const RunConfig cfg = read_checkpoint_config(ckpt);
  const ModelConfig& c = cfg.model;
  const HfArch arch = hf_arch_of(c);
  const GgufArch ga = gguf_arch(arch);
  if (!*ga.name)
    fail("moe export --format gguf: the model exports as " + std::string(name_of(arch)) + ", which GGUF export does not write yet");
  // The sizes as the Hugging Face config states them (what llama.cpp's converter reads too).
  const nlohmann::json hf = hf_config_of(c, arch);
  const bool shared = hf.value("shared_expert_intermediate_size", 0) > 0;
  const bool norm_topk = hf.value("norm_topk_prob", false);
  if (c.sparse_blocks().size() != static_cast<size_t>(c.num_hidden_layers))
    fail("moe export --format gguf: llama.cpp's " + std::string(ga.name) + " has an MoE FFN in every block, and this model has "
         "dense blocks (model.first_k_dense_replace or model.sparse_layers)");
  if (arch == HfArch::qwen2_moe && norm_topk)
    fail("moe export --format gguf: llama.cpp's qwen2moe does not renormalise the top-k gates; model.norm_topk_prob = true "
         "would compute another model there");
  if (arch == HfArch::olmoe && (norm_topk || c.attention().kv_heads() != c.num_attention_heads))
    fail("moe export --format gguf: llama.cpp's olmoe has neither grouped-query attention nor renormalised top-k gates "
         "(model.num_key_value_heads, model.norm_topk_prob)");
  if (arch == HfArch::qwen3_moe && !norm_topk)
    fail("moe export --format gguf: llama.cpp's qwen3moe renormalises the top-k gates; model.norm_topk_prob = false would "
         "compute another model there");
  // The vocabulary: the run's sentencepiece model ("llama"), or an imported tokenizer.json ("gpt2").
  const bool spm = fs::exists(ckpt + "/tokenizer.model");
  const bool bpe_file = !spm && fs::exists(ckpt + "/hf/tokenizer.json");
  if (!spm && !bpe_file)
    fail("moe export --format gguf: " + ckpt + " has neither tokenizer.model nor hf/tokenizer.json, and a GGUF file carries "
         "its vocabulary");
  Tokenizer sp;
  BpeTokenizer bpe;
  if (spm) sp.load(ckpt + "/tokenizer.model");
  else bpe = BpeTokenizer::load(ckpt + "/hf/tokenizer.json");
  const int vocab = spm ? sp.vocab_size() : bpe.vocab_size();
  if (vocab > c.vocab_size)
    fail("moe export --format gguf: the tokenizer has " + std::to_string(vocab) + " tokens but the model a vocabulary of " +
         std::to_string(c.vocab_size));
  const std::string pre = spm ? "" : gguf_pre_tokenizer(bpe, ckpt + "/hf/tokenizer.json");
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
  auto rows = [&](const std::string& param, int heads) -> std::function<void(float*)> {
    if (!ga.permute) return copy(param);
    const Tensor* t = p.at(param);
    return [t, heads, hd, d](float* dst) { permute_rope_rows(t->data(), heads, hd, d, dst); };
  };
  const int64_t E = hf.at(arch == HfArch::mixtral || arch == HfArch::granitemoe ? "num_local_experts" : "num_experts").get<int64_t>();
  const int64_t h = hf.contains("moe_intermediate_size") ? hf["moe_intermediate_size"].get<int64_t>()
                                                         : hf["intermediate_size"].get<int64_t>();
  const int64_t qd = static_cast<int64_t>(H) * hd, kvd = static_cast<int64_t>(KV) * hd;
  add("token_embd.weight", {c.vocab_size, d}, true, copy("model.embed_tokens.weight"));
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".", s = "model.layers." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", {d}, false, copy(s + "input_layernorm.weight"));
    add(b + "attn_q.weight", {qd, d}, true, rows(s + "self_attn.q_proj.weight", H));
    add(b + "attn_k.weight", {kvd, d}, true, rows(s + "self_attn.k_proj.weight", KV));
    add(b + "attn_v.weight", {kvd, d}, true, copy(s + "self_attn.v_proj.weight"));
    add(b + "attn_output.weight", {d, qd}, true, copy(s + "self_attn.o_proj.weight"));
    if (arch == HfArch::qwen2_moe)  // biases (zero when the model has none)
      for (const char* w : {"q", "k", "v"}) {
        const std::string name = s + "self_attn." + w + "_proj.bias";
        const int64_t n = *w == 'q' ? qd : kvd;
        add(b + "attn_" + w + ".bias", {n}, false,
            c.attention_bias ? copy(name) : std::function<void(float*)>([](float*) {}));
      }
    if (c.qk_norm != QkNorm::none) {
      const bool head = c.qk_norm == QkNorm::head;
      add(b + "attn_q_norm.weight", {head ? hd : qd}, false, copy(s + "self_attn.q_norm.weight"));
      add(b + "attn_k_norm.weight", {head ? hd : kvd}, false, copy(s + "self_attn.k_norm.weight"));
    }
    add(b + "ffn_norm.weight", {d}, false, copy(s + "post_attention_layernorm.weight"));
    add(b + "ffn_gate_inp.weight", {E, d}, false, copy(s + "mlp.router.weight"));
    add(b + "ffn_gate_exps.weight", {E, h, d}, true, copy(s + "mlp.experts.w1"));
    add(b + "ffn_up_exps.weight", {E, h, d}, true, copy(s + "mlp.experts.w3"));
    add(b + "ffn_down_exps.weight", {E, d, h}, true, copy(s + "mlp.experts.w2"));
    if (shared) {
      const int64_t sw = hf["shared_expert_intermediate_size"].get<int64_t>();
      add(b + "ffn_gate_inp_shexp.weight", {d}, false, copy(s + "mlp.shared_expert_gate.weight"));
      add(b + "ffn_gate_shexp.weight", {sw, d}, true, copy(s + "mlp.shared_experts.w1"));
      add(b + "ffn_up_shexp.weight", {sw, d}, true, copy(s + "mlp.shared_experts.w3"));
      add(b + "ffn_down_shexp.weight", {d, sw}, true, copy(s + "mlp.shared_experts.w2"));
    }
  }
  add("output_norm.weight", {d}, false, copy("model.norm.weight"));
  if (!c.tie_word_embeddings) add("output.weight", {c.vocab_size, d}, true, copy("lm_head.weight"));

  Meta meta;
  const std::string a = ga.name;
  meta.str("general.architecture", a);
  meta.str("general.name", fs::path(ckpt).filename().string());
  meta.u32("general.alignment", kAlign);
  meta.u32("general.file_type", type == GgufType::f32 ? 0 : type == GgufType::f16 ? 1 : type == GgufType::bf16 ? 32 : 7);
  meta.u32(a + ".vocab_size", static_cast<uint32_t>(c.vocab_size));
  meta.u32(a + ".context_length", static_cast<uint32_t>(c.context()));
  meta.u32(a + ".embedding_length", static_cast<uint32_t>(d));
  meta.u32(a + ".block_count", static_cast<uint32_t>(c.num_hidden_layers));
  meta.u32(a + ".feed_forward_length", static_cast<uint32_t>(hf["intermediate_size"].get<int64_t>()));
  if (hf.contains("moe_intermediate_size")) meta.u32(a + ".expert_feed_forward_length", static_cast<uint32_t>(h));
  if (shared)
    meta.u32(a + ".expert_shared_feed_forward_length", static_cast<uint32_t>(hf["shared_expert_intermediate_size"].get<int64_t>()));
  meta.u32(a + ".attention.head_count", static_cast<uint32_t>(H));
  meta.u32(a + ".attention.head_count_kv", static_cast<uint32_t>(KV));
  meta.u32(a + ".attention.key_length", static_cast<uint32_t>(hd));
  meta.u32(a + ".attention.value_length", static_cast<uint32_t>(hd));
  meta.u32(a + ".rope.dimension_count", static_cast<uint32_t>(hd));
  meta.f32(a + ".rope.freq_base", c.rope_theta);
  meta.f32(a + ".attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  meta.u32(a + ".expert_count", static_cast<uint32_t>(E));
  meta.u32(a + ".expert_used_count", static_cast<uint32_t>(hf["num_experts_per_tok"].get<int64_t>()));
  if (hf.contains("norm_topk_prob")) meta.boolean(a + ".expert_weights_norm", hf["norm_topk_prob"].get<bool>());
  if (arch == HfArch::granitemoe) {
    meta.f32(a + ".embedding_scale", c.embedding_multiplier);
    meta.f32(a + ".residual_scale", c.residual_multiplier);
    meta.f32(a + ".attention.scale", at.scale());
    meta.f32(a + ".logit_scale", c.logits_scaling);
  }
  // The vocabulary, padded to the model's size with unused pieces.
  std::vector<int32_t> ids(static_cast<size_t>(c.vocab_size));
  for (int i = 0; i < c.vocab_size; ++i) ids[static_cast<size_t>(i)] = i;
  auto piece = [&](int32_t i) {
    if (i >= vocab) return "[PAD" + std::to_string(i) + "]";
    std::string s = spm ? sp.piece(i) : bpe.piece(i);
    return s.empty() ? "[PAD" + std::to_string(i) + "]" : s;
  };
  // llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
  auto kind = [&](int32_t i) -> int32_t {
    if (i >= vocab || piece(i).rfind("[PAD", 0) == 0) return 5;
    if (spm) {
      static constexpr int32_t types[] = {1, 2, 3, 6, 5};
      return types[static_cast<int>(sp.kind(i))];
    }
    return bpe.is_special(i) ? 3 : bpe.is_added(i) ? 4 : 1;
  };
  meta.str("tokenizer.ggml.model", spm ? "llama" : "gpt2");
  if (!spm) meta.str("tokenizer.ggml.pre", pre);
  meta.array<int32_t>("tokenizer.ggml.tokens", kString, ids, [&](const int32_t& i) { meta.kv.str(piece(i)); });
  if (spm) meta.array<int32_t>("tokenizer.ggml.scores", kF32, ids, [&](const int32_t& i) { meta.kv.put<float>(i < vocab ? sp.score(i) : 0.f); });
  meta.array<int32_t>("tokenizer.ggml.token_type", kI32, ids, [&](const int32_t& i) { meta.kv.put<int32_t>(kind(i)); });
  if (!spm) {
    const std::vector<std::string> merges = bpe.merges();
    meta.array<std::string>("tokenizer.ggml.merges", kString, merges, [&](const std::string& m) { meta.kv.str(m); });
  }
  if (spm)
    for (int i = 0; i < vocab; ++i)
      if (sp.kind(i) == Tokenizer::PieceKind::unknown) meta.u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(i));
  if (const std::optional<ChatFormat> chat = read_chat_format(ckpt)) {  // the special tokens and template it names
    const TextTokenizer& t = spm ? static_cast<const TextTokenizer&>(sp) : bpe;
    if (const int32_t b = chat->bos_token.empty() ? -1 : t.id_of(chat->bos_token); b >= 0) meta.u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(b));
    if (const int32_t e = chat->eos_token.empty() ? -1 : t.id_of(chat->eos_token); e >= 0) meta.u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(e));
    meta.str("tokenizer.chat_template", chat->tmpl);
  }
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
