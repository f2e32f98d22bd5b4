// parallel.h — OpenMP helpers. Loops use static schedules so that which thread computes what does not
// change the results: every output element is written by exactly one iteration.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstddef>

namespace moe {

inline int num_threads() { return omp_get_max_threads(); }
void set_num_threads(int n);  // OpenMP and BLAS together

// for i in [0, n): fn(i), split statically over the threads; serial below `grain` iterations.
template <class F>
void parallel_for(size_t n, F&& fn, size_t grain = 1024) {
  if (n < grain || omp_in_parallel()) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  const long long nn = static_cast<long long>(n);
#pragma omp parallel for schedule(static)
  for (long long i = 0; i < nn; ++i) fn(static_cast<size_t>(i));
}

// for i in [0, n): fn(i) in chunks of `chunk` consecutive iterations, each chunk one `omp simd` loop
// (iteration i may touch element i only), the chunks split statically over the threads; serial when
// there is one chunk. For passes over whole buffers: residual adds, the optimizer's update.
template <class F>
void parallel_for_simd(size_t n, size_t chunk, F&& fn) {
  parallel_for((n + chunk - 1) / chunk, [&](size_t c) {
    const size_t lo = c * chunk, hi = std::min(n, lo + chunk);
#pragma omp simd
    for (size_t i = lo; i < hi; ++i) fn(i);
  }, 2);
}

// for i in [0, n): fn(i), handed out dynamically (uneven work, e.g. one expert per iteration).
// Results must not depend on the order: each iteration writes only its own outputs.
template <class F>
void parallel_for_dynamic(size_t n, F&& fn) {
  const long long nn = static_cast<long long>(n);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long i = 0; i < nn; ++i) fn(static_cast<size_t>(i));
}

}  // namespace moe
