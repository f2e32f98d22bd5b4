// tensor.h — an owning, contiguous, 64-byte aligned float tensor with a checked shape.
// Plain storage on purpose: the modules own their parameters and activations and index them by hand,
// with the shape written beside each field (`Tensor w1; // (E, h, d)`). While a Tensor::FreshPages
// is alive on the thread, new storage of 1 MiB or more is mapped from the kernel, whose fresh pages are
// zero: such a tensor is zero without being written, so a buffer never touched (the gradients of a
// model loaded only to run) costs no memory. Elsewhere (the training step's buffers) storage comes
// from the allocator, which reuses it without new page faults.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moe {

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::vector<int64_t> shape);
  Tensor(std::initializer_list<int64_t> shape) : Tensor(std::vector<int64_t>(shape)) {}
  Tensor(const Tensor& o);
  Tensor& operator=(const Tensor& o);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  // RAII: the tensors made on this thread while one is alive take fresh zero pages (see above).
  struct FreshPages {
    FreshPages();
    ~FreshPages();
    FreshPages(const FreshPages&) = delete;
    FreshPages& operator=(const FreshPages&) = delete;
  };

  // Resize to `shape` (contents unspecified when the size changes; kept when it does not).
  void resize(std::vector<int64_t> shape);
  void zero();
  void fill(float v);

  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  float& operator[](size_t i) { return data_[i]; }
  float operator[](size_t i) const { return data_[i]; }
  size_t numel() const { return numel_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;
  const std::vector<int64_t>& shape() const { return shape_; }
  bool empty() const { return numel_ == 0; }
  std::string shape_str() const;
  // Throws moe::Error "<what>: shape (a, b) where (c, d) is expected" on mismatch.
  void check_shape(const std::vector<int64_t>& expected, const std::string& what) const;

 private:
  struct Free {
    Free() noexcept : mapped_bytes(0) {}
    explicit Free(size_t bytes) noexcept : mapped_bytes(bytes) {}
    size_t mapped_bytes;  // 0: from aligned_storage (core/storage.h); else the length of an anonymous mapping
    void operator()(float* p) const;
  };
  bool fresh_ = false;  // the storage is a new mapping, all zero and untouched (resize, read by the constructor)
  std::vector<int64_t> shape_;
  size_t numel_ = 0;
  size_t capacity_ = 0;
  std::unique_ptr<float[], Free> data_;
};

std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace moe

namespace moe {
// The rows (along dim 0) of a parameter that one rank of an expert-parallel job holds: rows
// [first, first + value's rows) of a tensor of `total` rows. total 0: the rank holds it whole.
struct RowShard {
  int64_t first = 0, total = 0;
  bool sharded() const { return total > 0; }
};

// A named trainable parameter and its gradient, as modules list them for optimizers and checkpoints.
// A sharded one (expert parallelism) is the rank's rows; its name is the whole tensor's.
struct Param {
  std::string name;
  Tensor* value;
  Tensor* grad;
  RowShard shard{};
};

// The gradient of a table of which a step touches few rows: the rows (sorted, unique) and their
// gradients (rows, width). Memory and work grow with the rows touched, not with the table.
struct SparseRows {
  std::vector<int32_t> rows;
  Tensor grad;  // (rows.size(), width)
  void clear() { rows.clear(); grad.resize({0}); }
  // this += o: the union of the rows, gradients of common rows summed (o's added after this's).
  void add(SparseRows o);
};

// What training leaves unchanged: by parameter name, ranges [begin, end) of rows along the first
// dimension (the experts of a stacked expert tensor, the rows of a router matrix; a 1-D parameter's
// rows are its elements). Made by lifelong expansion (model/expand.h), honoured by AdamW.
using RowRange = std::pair<int64_t, int64_t>;
using FreezeMask = std::map<std::string, std::vector<RowRange>>;

// A table trained by rows (PEER's experts and sub-keys): its value (rows, width) and sparse gradient.
struct SparseParam {
  std::string name;
  Tensor* value;
  SparseRows* grad;
};
}  // namespace moe
