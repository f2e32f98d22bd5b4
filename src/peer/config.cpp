#include "peer/config.h"

#include <string>

#include "core/check.h"

namespace moe {

void PeerConfig::validate() const {
  const ConfigCheck check("peer");
  check.positive("hidden_size", hidden_size);
  check.positive("n_keys", n_keys);
  check.positive("heads", heads);
  check.positive("top_k", top_k);
  check.positive("d_key", d_key);
  check.require(d_key % 2 == 0, "d_key = " + std::to_string(d_key) + " must be even (it is split in two halves)");
  check.require(top_k <= n_keys, "top_k = " + std::to_string(top_k) + " is larger than n_keys = " + std::to_string(n_keys) +
                                     "; choose top_k <= n_keys");
  check.require(n_experts() <= (int64_t{1} << 31) - 1,
                "n_keys = " + std::to_string(n_keys) + " gives more than 2^31 experts; choose n_keys <= 46340");
  check.positive("bn_eps", bn_eps);
  check.in_range("bn_momentum", bn_momentum, 0.0, 1.0);
}

int64_t PeerConfig::num_params() const {
  const int64_t HD = static_cast<int64_t>(heads) * d_key;
  return HD * hidden_size + (query_bn ? 2 * HD : 0) + static_cast<int64_t>(n_keys) * d_key + 2 * n_experts() * hidden_size;
}

}  // namespace moe
