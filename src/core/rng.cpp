#include "core/rng.h"

#include <cmath>

#include "core/parallel.h"

namespace moe {

std::array<uint32_t, 4> philox4x32(uint64_t key, uint64_t c0, uint64_t c1) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  uint32_t x0 = static_cast<uint32_t>(c0), x1 = static_cast<uint32_t>(c0 >> 32);
  uint32_t x2 = static_cast<uint32_t>(c1), x3 = static_cast<uint32_t>(c1 >> 32);
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = static_cast<uint64_t>(M0) * x0;
    uint64_t p1 = static_cast<uint64_t>(M1) * x2;
    uint32_t y0 = static_cast<uint32_t>(p1 >> 32) ^ x1 ^ k0;
    uint32_t y1 = static_cast<uint32_t>(p1);
    uint32_t y2 = static_cast<uint32_t>(p0 >> 32) ^ x3 ^ k1;
    uint32_t y3 = static_cast<uint32_t>(p0);
    x0 = y0; x1 = y1; x2 = y2; x3 = y3;
    k0 += W0; k1 += W1;
  }
  return {x0, x1, x2, x3};
}

float rng_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
  return u32_to_unit(philox4x32(seed, i, stream)[0]);
}

float rng_normal(uint64_t seed, uint64_t stream, uint64_t i) {
  auto w = philox4x32(seed, i, stream ^ 0x5bd1e9955bd1e995ull);
  // u1 in (0, 1] so that log(u1) is finite.
  float u1 = (static_cast<float>(w[0] >> 8) + 1.0f) * (1.0f / 16777216.0f);
  float u2 = u32_to_unit(w[1]);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853071795864f * u2);
}

void fill_normal(float* dst, size_t n, uint64_t seed, uint64_t stream, float mean, float std, uint64_t first) {
  parallel_for(n, [&](size_t i) { dst[i] = mean + std * rng_normal(seed, stream, first + i); });
}

void fill_uniform(float* dst, size_t n, uint64_t seed, uint64_t stream, float lo, float hi, uint64_t first) {
  parallel_for(n, [&](size_t i) { dst[i] = lo + (hi - lo) * rng_uniform(seed, stream, first + i); });
}

namespace {
thread_local bool g_skip_param_init = false;
}  // namespace

SkipParamInit::SkipParamInit() : outer_(g_skip_param_init) { g_skip_param_init = true; }
SkipParamInit::~SkipParamInit() { g_skip_param_init = outer_; }

void init_normal(float* dst, size_t n, uint64_t seed, uint64_t stream, float mean, float std, uint64_t first) {
  if (!g_skip_param_init) fill_normal(dst, n, seed, stream, mean, std, first);
}

}  // namespace moe
