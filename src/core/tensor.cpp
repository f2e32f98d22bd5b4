#include "core/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <new>

#include <sys/mman.h>

#include "core/error.h"
#include "core/storage.h"

namespace moe {

// Elements of a shape; the empty shape holds none (moe.cpp has no 0-d scalars).
static size_t count(const std::vector<int64_t>& shape) {
  if (shape.empty()) return 0;
  size_t n = 1;
  for (int64_t s : shape) {
    MOE_CHECK(s >= 0, "tensor: negative dimension in shape " + shape_to_string(shape));
    n *= static_cast<size_t>(s);
  }
  return n;
}

static thread_local int fresh_pages_scopes = 0;
Tensor::FreshPages::FreshPages() { ++fresh_pages_scopes; }
Tensor::FreshPages::~FreshPages() { --fresh_pages_scopes; }

void Tensor::Free::operator()(float* p) const {
  if (mapped_bytes) ::munmap(p, mapped_bytes);
  else std::free(p);
}

Tensor::Tensor(std::vector<int64_t> shape) {
  resize(std::move(shape));
  if (!fresh_) zero();  // a fresh mapping is zero already, and stays untouched until written
  fresh_ = false;
}

Tensor::Tensor(const Tensor& o) { *this = o; }

Tensor& Tensor::operator=(const Tensor& o) {
  if (this == &o) return *this;
  resize(o.shape_);
  if (numel_) std::memcpy(data(), o.data(), numel_ * sizeof(float));
  return *this;
}

void Tensor::resize(std::vector<int64_t> shape) {
  size_t n = count(shape);
  fresh_ = false;
  if (n > capacity_) {
    size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
    constexpr size_t kMapAt = size_t{1} << 20;
    if (bytes >= kMapAt && fresh_pages_scopes > 0) {
      void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) throw std::bad_alloc();
      ::madvise(m, bytes, MADV_HUGEPAGE);  // as core/storage.h's: huge pages where the kernel gives them
      data_ = std::unique_ptr<float[], Free>(static_cast<float*>(m), Free{bytes});
      fresh_ = true;
    } else {
      auto* p = static_cast<float*>(aligned_storage(bytes));
      data_ = std::unique_ptr<float[], Free>(p, Free{0});
    }
    capacity_ = n;
  }
  shape_ = std::move(shape);
  numel_ = n;
}

void Tensor::zero() {
  if (numel_) std::memset(data(), 0, numel_ * sizeof(float));
}

void Tensor::fill(float v) { std::fill(data(), data() + numel_, v); }

int64_t Tensor::dim(int i) const {
  MOE_CHECK(i >= 0 && i < ndim(), "tensor: dimension " + std::to_string(i) + " of shape " + shape_str());
  return shape_[static_cast<size_t>(i)];
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

std::string Tensor::shape_str() const { return shape_to_string(shape_); }

void Tensor::check_shape(const std::vector<int64_t>& expected, const std::string& what) const {
  if (shape_ != expected)
    fail(what + ": shape " + shape_str() + " where " + shape_to_string(expected) + " is expected");
}

void SparseRows::add(SparseRows o) {
  if (o.rows.empty()) return;
  if (rows.empty()) {
    *this = std::move(o);
    return;
  }
  const int64_t w = o.grad.dim(1);
  MOE_CHECK(grad.dim(1) == w, "sparse rows: adding gradients of width " + std::to_string(w) + " to width " +
                                  std::to_string(grad.dim(1)));
  std::vector<int32_t> merged;
  merged.reserve(rows.size() + o.rows.size());
  std::set_union(rows.begin(), rows.end(), o.rows.begin(), o.rows.end(), std::back_inserter(merged));
  Tensor g({static_cast<int64_t>(merged.size()), w});
  const size_t W = static_cast<size_t>(w);
  for (size_t i = 0, a = 0, b = 0; i < merged.size(); ++i) {
    float* out = g.data() + i * W;
    if (a < rows.size() && rows[a] == merged[i]) {
      std::copy_n(grad.data() + a * W, W, out);
      ++a;
    }
    if (b < o.rows.size() && o.rows[b] == merged[i]) {
      const float* src = o.grad.data() + b * W;
      for (size_t j = 0; j < W; ++j) out[j] += src[j];
      ++b;
    }
  }
  rows = std::move(merged);
  grad = std::move(g);
}

}  // namespace moe
