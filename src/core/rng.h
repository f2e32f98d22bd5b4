// rng.h — counter-based random numbers (Philox-4x32-10, Salmon et al. 2011).
// A draw is a pure function of (seed, stream, counter): the same numbers come out whatever the
// thread count or the order in which threads ask, which keeps runs bit-identical across threads.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>

namespace moe {

// Four 32-bit random words for (key, counter).
std::array<uint32_t, 4> philox4x32(uint64_t key, uint64_t c0, uint64_t c1);

// Uniform in [0, 1) with 24 random bits, from one word.
inline float u32_to_unit(uint32_t w) { return static_cast<float>(w >> 8) * (1.0f / 16777216.0f); }

// The i-th uniform [0,1) number of stream `stream` under `seed`.
float rng_uniform(uint64_t seed, uint64_t stream, uint64_t i);
// The i-th standard normal number of stream `stream` under `seed` (Box-Muller on one Philox block).
float rng_normal(uint64_t seed, uint64_t stream, uint64_t i);

// Fill n floats: dst[i] = mean + std * normal(seed, stream, first + i). Parallel, thread-count
// independent. `first` lets a process draw its share of a longer stream (an expert-parallel rank's
// experts, its tokens' noise) exactly as one process drawing the whole stream would.
void fill_normal(float* dst, size_t n, uint64_t seed, uint64_t stream, float mean, float std, uint64_t first = 0);
// Fill n floats: dst[i] = lo + (hi - lo) * uniform(seed, stream, first + i).
void fill_uniform(float* dst, size_t n, uint64_t seed, uint64_t stream, float lo, float hi, uint64_t first = 0);

// A parameter's random initialisation: fill_normal, except while a SkipParamInit lives on this thread
// (a model built to be loaded from a checkpoint, whose every weight the load overwrites: drawing
// them first would cost most of a short `generate` and touch every page of the weights).
void init_normal(float* dst, size_t n, uint64_t seed, uint64_t stream, float mean, float std, uint64_t first = 0);
class SkipParamInit {
 public:
  SkipParamInit();
  ~SkipParamInit();
  SkipParamInit(const SkipParamInit&) = delete;
  SkipParamInit& operator=(const SkipParamInit&) = delete;

 private:
  bool outer_;  // the state it restores
};

}  // namespace moe
