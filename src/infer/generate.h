// generate.h — text generation with a trained model: a prefill of the prompt into the KV caches, then
// one token at a time, sampled with temperature, top-k and top-p (greedy at temperature 0); several
// prompts batched together.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/enum_names.h"
#include "model/transformer.h"

namespace moe {

// What generation does when the context is full: roll the KV cache (drop the older half of the
// positions after the first `keep`, re-rotate the rest: llama.cpp's context shift), or start again from
// the most recent half of the tokens with a new prefill (exact, and as costly as a prompt of half the
// window).
enum class ContextShift { roll, reprefill };
template <>
struct EnumNames<ContextShift> {
  static constexpr const char* what = "context shift";
  static constexpr std::array<const char*, 2> names = {"roll", "reprefill"};
};

struct SampleOptions {
  int max_tokens = 64;
  float temperature = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 1;
  int32_t stop_token = -1;  // generation ends after this token (a chat model's eos); -1: none
  ContextShift shift = ContextShift::roll;
  int keep = 0;  // roll: the first positions of the context that stay (a system prompt, an attention sink)
};

// Where the time of a generation went: the prompt through the model (prefill) and the tokens fed one at
// a time after it (decode), in seconds, with their token counts.
struct GenerateTimings {
  double prefill_s = 0.0, decode_s = 0.0, shift_s = 0.0;  // shift_s: rolling the cache (counted in decode_s)
  int prefill_tokens = 0, decode_tokens = 0, shifts = 0;
  double decode_bytes = 0.0;  // what the decoded tokens read at least (TransformerLM::decode_bytes, summed)
};

// Continues `prompt`; on_token(id, experts) is called for each generated token with the experts it
// went to in each block (fed through the model to learn them). timings, when given, gets the split.
std::vector<int32_t> generate(TransformerLM& model, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<void(int32_t, const BlockExperts&)>& on_token = {},
                              GenerateTimings* timings = nullptr);

// Continues several prompts together (batched decoding): the prompts' prefills in one pass, then one
// pass per step over every sequence still going, each weight matrix read once for all of them. Each
// prompt gets what generating it alone gives (the same random draws per step), to the rounding of the
// batched products; a sequence stops at its own stop token. on_token(sequence, id, experts) as above.
// In timings, decode_bytes counts the weights once per pass (a lower bound when the sequences' tokens
// use different experts) and each sequence's keys and values.
std::vector<std::vector<int32_t>> generate(TransformerLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                           const SampleOptions& o,
                                           const std::function<void(int, int32_t, const BlockExperts&)>& on_token = {},
                                           GenerateTimings* timings = nullptr);

}  // namespace moe
