#include "infer/generate.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "core/timer.h"
#include "core/vmath.h"

namespace moe {

std::vector<int32_t> generate(TransformerLM& model, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<void(int32_t, const BlockExperts&)>& on_token,
                              GenerateTimings* timings) {
  GenerateTimings local;
  GenerateTimings& tm = timings ? *timings : local;
  tm = {};
  std::vector<int32_t> seq = prompt;
  const int V = model.cfg.vocab_size, maxL = model.cfg.context();
  std::vector<float> p(static_cast<size_t>(V));
  std::vector<int32_t> idx(static_cast<size_t>(V));
  // Prefill the KV cache with the prompt (its last maxL − 1 tokens), then one token at a time; when the
  // context is full, roll the cache or prefill again from the most recent half (ContextShift).
  int last_fed = 0;  // tokens in the last decode call: its last row is the newest token
  auto prefill = [&](size_t from) {
    const auto t0 = clock_type::now();
    model.reset_cache();
    last_fed = static_cast<int>(seq.size() - from);
    const float* z = model.decode(seq.data() + from, last_fed);
    tm.prefill_s += ms_since(t0) / 1e3;
    tm.prefill_tokens += last_fed;
    return z;
  };
  MOE_CHECK(!seq.empty(), "generate: the prompt is empty");
  if (o.shift == ContextShift::roll && (o.keep < 0 || o.keep > maxL / 2))
    throw Error("generate: keep = " + std::to_string(o.keep) + " must lie in [0, " + std::to_string(maxL / 2) +
                "], half of the model's context of " + std::to_string(maxL));
  const float* z = prefill(seq.size() > static_cast<size_t>(maxL - 1) ? seq.size() - static_cast<size_t>(maxL - 1) : 0);
  for (int n = 0; n < o.max_tokens; ++n) {
    int32_t next;
    if (o.temperature <= 0.f) {
      next = static_cast<int32_t>(std::max_element(z, z + V) - z);
    } else {
      for (int v = 0; v < V; ++v) p[static_cast<size_t>(v)] = z[v] / o.temperature;
      softmax(p.data(), p.data(), V);
      std::iota(idx.begin(), idx.end(), 0);
      std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
      int keep = o.top_k > 0 ? std::min(o.top_k, V) : V;
      double cum = 0.0;
      for (int i = 0; i < keep; ++i) {
        cum += p[static_cast<size_t>(idx[static_cast<size_t>(i)])];
        if (cum >= o.top_p) { keep = i + 1; break; }
      }
      double total = 0.0;
      for (int i = 0; i < keep; ++i) total += p[static_cast<size_t>(idx[static_cast<size_t>(i)])];
      double u = rng_uniform(o.seed, 77, static_cast<uint64_t>(n)) * total;
      next = idx[static_cast<size_t>(keep - 1)];
      for (int i = 0; i < keep; ++i) {
        u -= p[static_cast<size_t>(idx[static_cast<size_t>(i)])];
        if (u <= 0) { next = idx[static_cast<size_t>(i)]; break; }
      }
    }
    seq.push_back(next);
    // Feed the new token (its routing is what --show-experts reports); the last one only when reported.
    if (n + 1 < o.max_tokens || on_token) {
      if (model.cache_len() < maxL || o.shift == ContextShift::roll) {
        const auto t0 = clock_type::now();
        if (model.cache_len() == maxL) {
          const auto ts = clock_type::now();
          model.shift_cache(o.keep, (maxL - o.keep) / 2);
          tm.shift_s += ms_since(ts) / 1e3;
          ++tm.shifts;
        }
        tm.decode_bytes += model.decode_bytes(model.cache_len() + 1);
        z = model.decode(&seq.back(), 1);
        tm.decode_s += ms_since(t0) / 1e3;
        ++tm.decode_tokens;
        last_fed = 1;
      } else {
        z = prefill(seq.size() - static_cast<size_t>(maxL / 2));
      }
    }
    if (on_token) on_token(next, model.experts_of(last_fed - 1));
    if (next == o.stop_token) break;
  }
  return {seq.begin() + static_cast<long>(prompt.size()), seq.end()};
}

}  // namespace moe
