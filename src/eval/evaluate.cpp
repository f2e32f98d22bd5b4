#include "eval/evaluate.h"

#include <algorithm>
#include <functional>

#include "core/error.h"
#include "nn/cross_entropy.h"

namespace moe {

// Runs loss(tokens, targets, B) over the first `windows` validation windows in batches of up to
// `batch`; returns the window-weighted mean of what it returns.
static double over_eval_windows(const TokenShard& shard, int L, int windows, int batch,
                                const std::function<double(const int32_t*, const int32_t*, int)>& loss) {
  const size_t n = eval_windows(shard, L, static_cast<size_t>(windows));
  MOE_CHECK(n > 0, "validation shard " + shard.path() + " is shorter than one sequence");
  std::vector<int32_t> tok(static_cast<size_t>(batch) * L), tgt(tok.size());
  double sum = 0.0;
  size_t counted = 0;
  for (size_t w0 = 0; w0 < n; w0 += static_cast<size_t>(batch)) {
    const int B = static_cast<int>(std::min<size_t>(static_cast<size_t>(batch), n - w0));
    for (int b = 0; b < B; ++b) eval_window(shard, L, w0 + static_cast<size_t>(b), tok.data() + b * L, tgt.data() + b * L);
    sum += loss(tok.data(), tgt.data(), B) * B;
    counted += static_cast<size_t>(B);
  }
  return sum / static_cast<double>(counted);
}

double evaluate(TransformerLM& model, const TokenShard& shard, int L, int windows, int batch) {
  return over_eval_windows(shard, L, windows, batch, [&](const int32_t* tok, const int32_t* tgt, int B) {
    const Tensor& logits = model.forward_logits(tok, B, L);
    return cross_entropy(logits.data(), tgt, B * L, model.cfg.vocab_size, nullptr);
  });
}

double sparse_report(TransformerLM& model, const TokenShard& shard, int L, int windows, int batch, bool train_routing,
                     std::vector<LayerStats>& stats) {
  stats = model.new_stats();
  uint64_t first_window = 0;  // keys the random draws of training routing
  return over_eval_windows(shard, L, windows, batch, [&](const int32_t* tok, const int32_t* tgt, int B) {
    const double ce = model.forward(tok, tgt, B, L, train_routing, first_window);
    first_window += static_cast<uint64_t>(batch);
    for (LayerStats& s : stats) s.stats->add();
    return ce;
  });
}

}  // namespace moe
