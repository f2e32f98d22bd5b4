// small_gemm.h — one thread's small fp32 matrix product, for the products inside a parallel task
// (attention's per-head products: tens to hundreds of rows and columns) where BLAS's dispatch and
// packing cost as much as the arithmetic.
//
//   C (m, n) = alpha · A·B, or C += alpha · A·B with accumulate
//
// A's element (i, p) is A[i·a_row + p·a_col], so A or Aᵀ of a row-major matrix is read in place; B is
// (k, n) row-major with row stride ldb. Register tiles of up to 6 rows by 64 columns, each element of C
// summed over p in order (one fma per p): the result depends on neither alignment nor thread count.
#pragma once
#include <cstddef>

namespace moe {

void small_gemm(int m, int n, int k, float alpha, const float* A, std::ptrdiff_t a_row, std::ptrdiff_t a_col,
                const float* B, std::ptrdiff_t ldb, float* C, std::ptrdiff_t ldc, bool accumulate);

// The transpose of the (rows, cols) block at src (row stride lds) into dst (cols, rows) with row
// stride ldd.
void transpose_block(const float* src, std::ptrdiff_t lds, int rows, int cols, float* dst, std::ptrdiff_t ldd);

}  // namespace moe
