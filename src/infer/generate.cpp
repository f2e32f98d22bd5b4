#include "infer/generate.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "core/timer.h"
#include "core/vmath.h"

namespace moe {

namespace {

// Samples a token from logits z (V) at the given step: argmax at temperature 0, else top-k, top-p.
int32_t sample(const float* z, int V, const SampleOptions& o, int step, std::vector<float>& p, std::vector<int32_t>& idx) {
  if (o.temperature <= 0.f) return static_cast<int32_t>(std::max_element(z, z + V) - z);
  for (int v = 0; v < V; ++v) p[static_cast<size_t>(v)] = z[v] / o.temperature;
  softmax(p.data(), p.data(), V);
  std::iota(idx.begin(), idx.end(), 0);
  // Most probable first, ties by token id: a strict total order, so the top k come out the same
  // whether the whole vocabulary is sorted or only its top k (a full sort of 4096 probabilities took
  // a quarter of a decode step).
  auto before = [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
  int keep = o.top_k > 0 ? std::min(o.top_k, V) : V;
  if (keep < V)
    std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), before);
  else
    std::sort(idx.begin(), idx.end(), before);
  double cum = 0.0;
  for (int i = 0; i < keep; ++i) {
    cum += p[static_cast<size_t>(idx[static_cast<size_t>(i)])];
    if (cum >= o.top_p) { keep = i + 1; break; }
  }
  double total = 0.0;
  for (int i = 0; i < keep; ++i) total += p[static_cast<size_t>(idx[static_cast<size_t>(i)])];
  // Every sequence draws the same numbers at a step: a prompt continues as it would alone.
  double u = rng_uniform(o.seed, 77, static_cast<uint64_t>(step)) * total;
  int32_t next = idx[static_cast<size_t>(keep - 1)];
  for (int i = 0; i < keep; ++i) {
    u -= p[static_cast<size_t>(idx[static_cast<size_t>(i)])];
    if (u <= 0) { next = idx[static_cast<size_t>(i)]; break; }
  }
  return next;
}

}  // namespace

std::vector<std::vector<int32_t>> generate(TransformerLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                           const SampleOptions& o,
                                           const std::function<void(int, int32_t, const BlockExperts&)>& on_token,
                                           GenerateTimings* timings) {
  GenerateTimings local;
  GenerateTimings& tm = timings ? *timings : local;
  tm = {};
  const int P = static_cast<int>(prompts.size()), V = model.cfg.vocab_size, maxL = model.cfg.context();
  MOE_CHECK(P > 0, "generate: no prompt");
  for (const auto& pr : prompts) MOE_CHECK(!pr.empty(), "generate: a prompt is empty");
  if (o.shift == ContextShift::roll && (o.keep < 0 || o.keep > maxL / 2))
    throw Error("generate: keep = " + std::to_string(o.keep) + " must lie in [0, " + std::to_string(maxL / 2) +
                "], half of the model's context of " + std::to_string(maxL));
  std::vector<std::vector<int32_t>> seq = prompts;
  std::vector<float> p(static_cast<size_t>(V));
  std::vector<int32_t> idx(static_cast<size_t>(V));
  // One batched pass per step over the sequences still going (segments): one new token each, or, where
  // a sequence's context is full and the shift prefills again, its most recent half. row[s] is the
  // sequence's row in the pass's logits, last[s] that of its newest token among the pass's tokens.
  std::vector<int> row(static_cast<size_t>(P), -1), last(static_cast<size_t>(P), -1);
  std::vector<TransformerLM::DecodeSegment> segs;
  std::vector<int32_t> feed;
  const Tensor* z = nullptr;
  auto add = [&](int s, size_t from) {  // sequence s's tokens [from, end) as a segment
    const std::vector<int32_t>& q = seq[static_cast<size_t>(s)];
    const int n = static_cast<int>(q.size() - from);
    row[static_cast<size_t>(s)] = static_cast<int>(segs.size());
    last[static_cast<size_t>(s)] = static_cast<int>(feed.size()) + n - 1;
    segs.push_back({s, n});
    feed.insert(feed.end(), q.begin() + static_cast<long>(from), q.end());
  };
  auto run = [&](bool prefill) {
    const auto t0 = clock_type::now();
    z = &model.decode(feed.data(), segs);
    const double sec = ms_since(t0) / 1e3;
    (prefill ? tm.prefill_s : tm.decode_s) += sec;
    (prefill ? tm.prefill_tokens : tm.decode_tokens) += static_cast<int>(feed.size());
  };
  // Prefill every prompt (its last maxL − 1 tokens) in one pass.
  model.reset_cache(P);
  for (int s = 0; s < P; ++s) {
    const size_t len = seq[static_cast<size_t>(s)].size();
    add(s, len > static_cast<size_t>(maxL - 1) ? len - static_cast<size_t>(maxL - 1) : 0);
  }
  run(true);
  std::vector<bool> done(static_cast<size_t>(P), false);
  for (int n = 0; n < o.max_tokens; ++n) {
    std::vector<int> going;
    for (int s = 0; s < P; ++s) {
      if (done[static_cast<size_t>(s)]) continue;
      seq[static_cast<size_t>(s)].push_back(sample(z->data() + static_cast<size_t>(row[static_cast<size_t>(s)]) * V, V, o, n, p, idx));
      going.push_back(s);
    }
    if (going.empty()) break;
    // Feed the new tokens (their routing is what --show-experts reports); the last ones only when reported.
    if (n + 1 < o.max_tokens || on_token) {
      segs.clear();
      feed.clear();
      bool refill = false;
      double bytes = 0.0;
      for (int s : going) {
        const size_t len = seq[static_cast<size_t>(s)].size();
        if (model.cache_len(s) == maxL && o.shift == ContextShift::reprefill) {
          model.shift_cache(0, maxL, s);  // empty: its most recent half goes in again
          add(s, len - static_cast<size_t>(maxL / 2));
          refill = true;
          continue;
        }
        if (model.cache_len(s) == maxL) {
          const auto ts = clock_type::now();
          model.shift_cache(o.keep, (maxL - o.keep) / 2, s);
          tm.shift_s += ms_since(ts) / 1e3;
          tm.decode_s += ms_since(ts) / 1e3;
          ++tm.shifts;
        }
        // The weights once per pass, each sequence's keys and values (TransformerLM::decode_bytes).
        bytes += model.decode_bytes(model.cache_len(s) + 1) - (bytes > 0.0 ? model.decode_bytes(0) : 0.0);
        add(s, len - 1);
      }
      if (!refill) tm.decode_bytes += bytes;
      run(refill);
    }
    for (int s : going) {
      const int32_t next = seq[static_cast<size_t>(s)].back();
      if (on_token) on_token(s, next, model.experts_of(last[static_cast<size_t>(s)]));
      if (next == o.stop_token) done[static_cast<size_t>(s)] = true;
    }
  }
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(P));
  for (int s = 0; s < P; ++s)
    out[static_cast<size_t>(s)].assign(seq[static_cast<size_t>(s)].begin() + static_cast<long>(prompts[static_cast<size_t>(s)].size()),
                                      seq[static_cast<size_t>(s)].end());
  return out;
}

std::vector<int32_t> generate(TransformerLM& model, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<void(int32_t, const BlockExperts&)>& on_token, GenerateTimings* timings) {
  std::function<void(int, int32_t, const BlockExperts&)> each;
  if (on_token) each = [&](int, int32_t id, const BlockExperts& e) { on_token(id, e); };
  return generate(model, std::vector<std::vector<int32_t>>{prompt}, o, each, timings).front();
}

}  // namespace moe
