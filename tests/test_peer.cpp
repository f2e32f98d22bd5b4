// PEER's product-key retrieval (SPEC §5): for random queries, the product-key top-k equals the
// brute-force top-k over all N = n_keys² scores, ties broken the same way (lower expert index).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "moe/peer.h"

namespace moe::test {
namespace {

void brute_force(const std::vector<float>& s1, const std::vector<float>& s2, int n, int k, std::vector<int32_t>& idx) {
  std::vector<int32_t> all(static_cast<size_t>(n) * n);
  std::iota(all.begin(), all.end(), 0);
  auto score = [&](int32_t e) { return s1[static_cast<size_t>(e / n)] + s2[static_cast<size_t>(e % n)]; };
  std::stable_sort(all.begin(), all.end(), [&](int32_t x, int32_t y) { return score(x) > score(y); });
  idx.assign(all.begin(), all.begin() + k);
}

TEST(ProductKeys, TopKEqualsBruteForce) {
  struct Case { int n, k; };
  int checked = 0;
  for (Case c : {Case{8, 1}, Case{16, 4}, Case{64, 16}, Case{128, 8}, Case{32, 32}, Case{256, 16}}) {
    for (uint64_t q = 0; q < 20; ++q) {
      std::vector<float> s1(static_cast<size_t>(c.n)), s2(s1.size());
      fill_normal(s1.data(), s1.size(), 3, q * 2, 0.f, 1.f);
      fill_normal(s2.data(), s2.size(), 3, q * 2 + 1, 0.f, 1.f);
      std::vector<int32_t> want, got(static_cast<size_t>(c.k));
      std::vector<float> score(static_cast<size_t>(c.k));
      brute_force(s1, s2, c.n, c.k, want);
      product_key_topk(s1.data(), s2.data(), c.n, c.k, got.data(), score.data());
      ASSERT_EQ(got, want) << "n_keys " << c.n << " k " << c.k << " query " << q;
      for (int i = 0; i < c.k; ++i)
        EXPECT_EQ(score[static_cast<size_t>(i)], s1[static_cast<size_t>(got[static_cast<size_t>(i)] / c.n)] +
                                                      s2[static_cast<size_t>(got[static_cast<size_t>(i)] % c.n)]);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 120);
}

TEST(ProductKeys, TiesGoToTheLowerExpertIndex) {
  // Small integer scores: exact sums and many ties.
  for (uint64_t q = 0; q < 50; ++q) {
    const int n = 12, k = 7;
    std::vector<float> s1(n), s2(n);
    for (int i = 0; i < n; ++i) {
      s1[static_cast<size_t>(i)] = static_cast<float>(static_cast<int>(rng_uniform(5, q, static_cast<uint64_t>(i)) * 4.f));
      s2[static_cast<size_t>(i)] = static_cast<float>(static_cast<int>(rng_uniform(6, q, static_cast<uint64_t>(i)) * 4.f));
    }
    std::vector<int32_t> want, got(k);
    std::vector<float> score(k);
    brute_force(s1, s2, n, k, want);
    product_key_topk(s1.data(), s2.data(), n, k, got.data(), score.data());
    ASSERT_EQ(got, want) << "query " << q;
  }
}

}  // namespace
}  // namespace moe::test
