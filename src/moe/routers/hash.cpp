// hash.cpp — Hash Layers (Roller et al. 2021): routing by a fixed balanced hash of the token id.
#include <numeric>
#include <string>

#include "core/error.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "moe/routers/routers.h"

namespace moe {

HashRouter::HashRouter(const MoeConfig& c) : Router(c), table(static_cast<size_t>(c.vocab_size)) {
  // π: a Fisher–Yates shuffle of the vocabulary keyed by the seed and the layer, so that each layer
  // hashes differently; expert of slot 0 = π(v) mod E.
  const int V = c.vocab_size;
  std::vector<int32_t> perm(static_cast<size_t>(V));
  std::iota(perm.begin(), perm.end(), 0);
  for (int i = V - 1; i > 0; --i) {
    const double u = rng_uniform(c.seed, c.layer_id * 64 + 3, static_cast<uint64_t>(i));
    const int j = std::min(i, static_cast<int>(u * (i + 1)));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  for (int v = 0; v < V; ++v) table[static_cast<size_t>(v)] = perm[static_cast<size_t>(v)] % E;
  w.resize({0});
  dw.resize({0});
}

void HashRouter::check(const MoeConfig& c, const ConfigCheck& check) {
  check.require(c.vocab_size > 0,
                "router = \"hash\" hashes token ids but vocab_size = 0; set vocab_size (a model sets it from its own)");
  // Hash routing has no router logits: balance losses would be constants with no gradient.
  for (auto [field, v] : c.balance_coefs())
    check.require(v == 0.f, std::string(field) + " = " + format_number(v) + " but router = \"hash\" has no router logits "
                            "to balance; set " + field + " = 0");
}

void HashRouter::route(int T, const FfnContext& ctx, Routing& r) {
  MOE_CHECK(ctx.tokens != nullptr, "router = \"hash\" routes by token id, but the layer was given no token ids");
  prob.fill(1.f / static_cast<float>(E));  // s = 0 (no W_r): P uniform, what the metrics see
  const int stride = E / k, V = static_cast<int>(table.size());
  for (int t = 0; t < T; ++t) {
    const int32_t v = ctx.tokens[t];
    MOE_CHECK(v >= 0 && v < V, "router = \"hash\": token id " + std::to_string(v) + " is outside the vocabulary of " +
                                   std::to_string(V));
    for (int i = 0; i < k; ++i) {
      r.expert[static_cast<size_t>(t) * k + i] = (table[static_cast<size_t>(v)] + i * stride) % E;
      r.gate[static_cast<size_t>(t) * k + i] = 1.f / static_cast<float>(k);
    }
  }
}

}  // namespace moe
