// safetensors.h — read and write the safetensors format (8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then raw little-endian data).
// F32 tensors are what moe.cpp stores; reading also accepts F64, F16 and BF16 (converted to float).
// Writes are atomic: a temporary file beside the target, fsync, rename.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moe {

struct TensorFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

void save_safetensors(const std::string& path, const TensorFile& file);
// The same from tensors held elsewhere, written straight from them (no copy: checkpoints of a million
// PEER experts are gigabytes). Names must be unique; they are stored sorted.
void save_safetensors(const std::string& path, const std::map<std::string, const Tensor*>& tensors,
                      const std::map<std::string, std::string>& metadata);
// Throws moe::Error naming the file and what is wrong (truncated, bad header, offsets out of range...).
TensorFile load_safetensors(const std::string& path);
// Reads each tensor straight from the mapped file into dest(name, shape), which returns the tensor to
// fill (already of that shape) or nullptr to skip it; returns the metadata. No copy of the file in
// memory: loading a checkpoint of gigabytes costs no more than the model it fills.
std::map<std::string, std::string> load_safetensors_into(
    const std::string& path, const std::function<Tensor*(const std::string&, const std::vector<int64_t>&)>& dest);

// Write `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
void write_file_atomic(const std::string& path, const std::string& bytes);

// A file written atomically in pieces: write() appends to a temporary file beside `path`; commit()
// fsyncs and renames it onto path. Destroyed without commit(), it removes the temporary file.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t bytes);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

}  // namespace moe
