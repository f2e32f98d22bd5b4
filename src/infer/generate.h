// generate.h — text generation with a trained model: a prefill of the prompt into the KV caches, then
// one token at a time, sampled with temperature, top-k and top-p (greedy at temperature 0).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/transformer.h"

namespace moe {

struct SampleOptions {
  int max_tokens = 64;
  float temperature = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 1;
  int32_t stop_token = -1;  // generation ends after this token (a chat model's eos); -1: none
};

// Where the time of a generation went: the prompt through the model (prefill) and the tokens fed one at
// a time after it (decode), in seconds, with their token counts.
struct GenerateTimings {
  double prefill_s = 0.0, decode_s = 0.0;
  int prefill_tokens = 0, decode_tokens = 0;
  double decode_bytes = 0.0;  // what the decoded tokens read at least (TransformerLM::decode_bytes, summed)
};

// Continues `prompt`; on_token(id, experts) is called for each generated token with the experts it
// went to in each block (fed through the model to learn them). timings, when given, gets the split.
std::vector<int32_t> generate(TransformerLM& model, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<void(int32_t, const BlockExperts&)>& on_token = {},
                              GenerateTimings* timings = nullptr);

}  // namespace moe
