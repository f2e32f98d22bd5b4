// parallel.h — OpenMP helpers. Loops use static schedules so that which thread computes what does not
// change the results: every output element is written by exactly one iteration.
#pragma once
#include <omp.h>

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

// for i in [0, n): fn(i), handed out dynamically (uneven work, e.g. one expert per iteration).
// Results must not depend on the order: each iteration writes only its own outputs.
template <class F>
void parallel_for_dynamic(size_t n, F&& fn) {
  const long long nn = static_cast<long long>(n);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long i = 0; i < nn; ++i) fn(static_cast<size_t>(i));
}

}  // namespace moe
