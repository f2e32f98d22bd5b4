#include "core/parallel.h"

#include "core/gemm.h"

namespace moe {

void set_num_threads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  blas_set_threads(n);
}

}  // namespace moe
