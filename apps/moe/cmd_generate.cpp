// cmd_generate.cpp — `moe generate`: continue a prompt (text, or token ids) with a trained or imported
// model, optionally showing the experts each generated token went to.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apps/moe/commands.h"
#include "apps/moe/common.h"
#include "core/error.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "interop/scoring.h"

namespace moe::cli {

namespace {

// --timing: prefill and decode rates, and decoding against its memory-bandwidth bound measured now.
void print_timing(const GenerateTimings& tm, const TransformerLM& model, int sequences) {
  const double decode_rate = tm.decode_tokens / std::max(tm.decode_s, 1e-9);
  std::fprintf(stderr, "timing: prefill %d tokens in %.2f ms (%.1f tokens/s), decode %d tokens in %.2f ms (%.1f tokens/s)%s\n",
               tm.prefill_tokens, tm.prefill_s * 1e3, tm.prefill_tokens / std::max(tm.prefill_s, 1e-9), tm.decode_tokens,
               tm.decode_s * 1e3, decode_rate, sequences > 1 ? (", " + std::to_string(sequences) + " sequences").c_str() : "");
  if (tm.shifts > 0)
    std::fprintf(stderr, "timing: %d context shifts (rolled caches) in %.2f ms, counted in the decode\n", tm.shifts, tm.shift_s * 1e3);
  if (tm.decode_tokens > 0 && tm.decode_bytes > 0.0) {
    const double gbps = measure_read_gbps(), mb = tm.decode_bytes / tm.decode_tokens / 1e6;
    const double bound = gbps * 1e3 / mb;
    std::fprintf(stderr, "timing: bandwidth bound %.1f tokens/s = %.1f GB/s read (measured now, %d threads) / %.2f MB a "
                 "token (active weights, matrices in %s, %sand KV cache in %s); decode at %.2f of it\n", bound, gbps,
                 num_threads(), mb, name_of(model.weight_format()), sequences > 1 ? "read once per step for all sequences, " : "",
                 name_of(model.kv_cache()), decode_rate / bound);
    // A small model's token stays in the caches between tokens: the rate of a plain sum over that many
    // bytes, re-read, is what its reads can reach there. (Not for a token larger than half the buffer
    // above: that one comes from memory.)
    const auto token_bytes = static_cast<size_t>(mb * 1e6);
    if (token_bytes > (size_t{128} << 20)) return;
    const double cache_gbps = measure_read_gbps(token_bytes, std::max(20, static_cast<int>(2e9 / static_cast<double>(token_bytes))));
    const double cache_bound = cache_gbps * 1e3 / mb;
    std::fprintf(stderr, "timing: in-cache bound %.1f tokens/s = %.1f GB/s read over a buffer of one token's %.2f MB, re-read "
                 "(measured now, %d threads); decode at %.2f of it\n", cache_bound, cache_gbps, mb, num_threads(),
                 decode_rate / cache_bound);
  }
}

// oneDNN's sgemm (the default on CPUs with AVX-512) compiles its kernels at its first call:
// 63 ms on the AMX Xeon of docs/PERFORMANCE.md, seven times a 60-token prompt's whole prefill on
// OpenBLAS (9 ms). A generate's GEMMs are its prefills (decoding runs the packed matrix-vector
// products), so unless MOE_SGEMM chooses, they run on OpenBLAS while the prompts' prefill is under
// 30 GFLOP, about the work at which oneDNN's faster kernels (1.5× on that machine) repay the compile.
void choose_sgemm_for_prefill(const TransformerLM& model, const std::vector<std::vector<int32_t>>& prompts) {
  if (std::getenv("MOE_SGEMM") != nullptr || fp32_gemm() != Fp32Gemm::onednn) return;
  double tokens = 0.0;
  for (const auto& p : prompts) tokens += static_cast<double>(std::min<size_t>(p.size(), static_cast<size_t>(model.cfg.context())));
  if (2.0 * static_cast<double>(model.num_active_params()) * tokens < 30e9) set_fp32_gemm(Fp32Gemm::openblas);
}

}  // namespace

void add_generate(CLI::App& app) {
  static std::string ckpt, prompt, prompt_ids, prompts_file, system_prompt;
  static SampleOptions so;
  static bool show_experts = false, allow_nonfinite = false, timing = false, chat = false;
  static int threads = 0;
  static WeightFormat weights = WeightFormat::fp32;
  static Precision kv_cache = Precision::fp32;
  static CLI::Option* weights_opt = nullptr;
  auto* cmd = app.add_subcommand("generate", "Continue a prompt with a trained model");
  cmd->add_option("--ckpt", ckpt, "Checkpoint folder")->required();
  auto* text = cmd->add_option("--prompt", prompt, "Text to continue");
  auto* ids_opt = cmd->add_option("--prompt-ids", prompt_ids, "Token ids to continue instead, one prompt per line (several: "
                                              "decoded together); the generated ids are printed as a line \"ids: ...\" per prompt")
      ->excludes(text);
  cmd->add_option("--prompts", prompts_file, "A file of prompts, one per line, continued together (batched decoding: each "
                                             "weight read once per step for all of them); each printed as \"[i] text\"")
      ->excludes(text)
      ->excludes(ids_opt);
  cmd->add_option("--max-tokens", so.max_tokens, "Tokens to generate")->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", so.temperature, "Sampling temperature (0: greedy)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", so.top_k, "Keep the k most likely tokens (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", so.top_p, "Nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", so.seed, "Sampling seed");
  cmd->add_flag("--show-experts", show_experts, "Print the experts each generated token went to, per block with experts");
  cmd->add_flag("--chat", chat, "Send the prompt as a user message through the model's chat template (an imported "
                                "model's hf/tokenizer_config.json); generation stops at its eos token");
  cmd->add_option("--system", system_prompt, "With --chat: a system message before the prompt");
  weights_opt = add_enum_option(cmd, "--weights", weights,
                                "The weight matrices packed for decoding: bf16 halves the bytes a token reads, q8_0 "
                                "(llama.cpp's Q8_0: int8 in blocks of 32 with an fp16 scale) nearly quarters them and "
                                "multiplies activations rounded to int8 blocks too, as llama.cpp does; bf16 keeps "
                                "activations in fp32. fp32 reads the model's own matrices, stacked for fewer passes. "
                                "A model trained in bf16 decodes from bf16 unless told");
  add_enum_option(cmd, "--kv-cache", kv_cache,
                  "The KV cache's storage: bf16 halves the bytes a token reads from it (what dominates at long "
                  "context); `moe eval --kv-cache bf16` gives its perplexity cost");
  add_enum_option(cmd, "--context-shift", so.shift,
                  "When the context is full: roll the KV cache (drop the older half after --keep, re-rotate the keys) "
                  "or prefill again from the most recent half of the tokens");
  cmd->add_option("--keep", so.keep, "With --context-shift roll: positions at the start of the context that are never "
                                     "dropped (default 0)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--timing", timing, "Print prefill and decode tokens/s to stderr");
  add_threads(cmd, threads);
  add_allow_nonfinite(cmd, allow_nonfinite);
  cmd->callback([] {
    apply_threads(threads);
    if (prompt.empty() && prompt_ids.empty() && prompts_file.empty()) throw CLI::RequiredError("--prompt, --prompts or --prompt-ids");
    LoadedRun run = load_run(ckpt, allow_nonfinite);
    const bool bf16_model = run.cfg.model.precision() == Precision::bf16;
    run.model->pack_weights(weights_opt->count() > 0 ? weights : bf16_model ? WeightFormat::bf16 : WeightFormat::fp32);
    run.model->set_kv_cache(kv_cache);
    // Its sentencepiece tokenizer.model, or an imported model's byte-level BPE (hf/tokenizer.json).
    const std::unique_ptr<TextTokenizer> tok = open_run_tokenizer(ckpt);
    const bool has_tok = tok != nullptr;
    if (!has_tok && prompt_ids.empty()) fail(ckpt + " has no tokenizer (tokenizer.model or hf/tokenizer.json); give --prompt-ids FILE");
    std::vector<std::vector<int32_t>> starts;
    if (!prompts_file.empty()) {
      if (chat) fail("--chat takes one --prompt, not --prompts");
      std::ifstream in(prompts_file);
      if (!in) fail("--prompts: cannot read " + prompts_file);
      for (std::string line; std::getline(in, line);)
        if (!line.empty()) starts.push_back(tok->encode(line));
      if (starts.empty()) fail(prompts_file + " holds no prompt: write one per line");
    } else if (!prompt_ids.empty() && !chat) {
      starts = read_token_ids(prompt_ids, run.cfg.model.vocab_size);
    }
    if (starts.size() > 1 || !prompts_file.empty()) {
      if (show_experts) fail("--show-experts follows one prompt; give --prompt or a --prompt-ids file of one line");
      GenerateTimings tm;
      choose_sgemm_for_prefill(*run.model, starts);
      const std::vector<std::vector<int32_t>> outs = generate(*run.model, starts, so, {}, &tm);
      for (size_t i = 0; i < outs.size(); ++i) {
        if (has_tok && prompt_ids.empty()) {
          std::vector<int32_t> all = starts[i];
          all.insert(all.end(), outs[i].begin(), outs[i].end());
          const std::string t = "[" + std::to_string(i) + "] " + tok->decode(all) + "\n";
          std::fwrite(t.data(), 1, t.size(), stdout);
        } else {
          std::string ids;
          for (int32_t id : outs[i]) ids += (ids.empty() ? "" : " ") + std::to_string(id);
          std::printf("ids: %s\n", ids.c_str());
        }
      }
      if (timing) print_timing(tm, *run.model, static_cast<int>(outs.size()));
      return;
    }
    std::vector<int32_t> start;
    if (chat) {
      const std::optional<ChatFormat> f = read_chat_format(ckpt);
      if (!f || !has_tok || prompt.empty())
        fail("--chat needs --prompt and a model with a chat template (hf/tokenizer_config.json of an imported model)");
      std::vector<ChatMessage> messages;
      if (!system_prompt.empty()) messages.push_back({"system", system_prompt});
      messages.push_back({"user", prompt});
      start = encode_chat(*tok, render_chat_template(f->tmpl, messages, true, f->bos_token, f->eos_token), *f);
      so.stop_token = f->eos_token.empty() ? -1 : tok->id_of(f->eos_token);
    } else {
      start = prompt_ids.empty() ? tok->encode(prompt) : starts.front();
      if (has_tok) {
        const std::string t = prompt_ids.empty() ? prompt : tok->decode(start);
        std::fwrite(t.data(), 1, t.size(), stdout);
      }
    }
    std::fflush(stdout);
    std::vector<std::string> routes;
    std::string out_ids;
    GenerateTimings tm;
    choose_sgemm_for_prefill(*run.model, {start});
    generate(*run.model, start, so, [&](int32_t id, const BlockExperts& experts) {
      out_ids += (out_ids.empty() ? "" : " ") + std::to_string(id);
      if (has_tok) {  // written whole: a byte token may be NUL
        const std::string t = tok->token_text(id);
        std::fwrite(t.data(), 1, t.size(), stdout);
      }
      std::fflush(stdout);
      if (!show_experts) return;
      std::string line = "'" + (has_tok ? tok->piece(id) : std::to_string(id)) + "':";
      for (const auto& [block, ids] : experts) {
        line += " L" + std::to_string(block) + "[";
        for (size_t i = 0; i < ids.size(); ++i) {
          if (i) line += ",";
          line += std::to_string(ids[i]);
        }
        line += "]";
      }
      routes.push_back(line);
    }, &tm);
    std::printf("\n");
    if (timing) print_timing(tm, *run.model, 1);
    if (!prompt_ids.empty()) std::printf("ids: %s\n", out_ids.c_str());
    for (const std::string& r : routes) std::printf("%s\n", r.c_str());
  });
}

}  // namespace moe::cli
