// safetensors.h — read and write the safetensors format (8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then raw little-endian data).
// F32 tensors are what moe.cpp stores; reading also accepts F64, F16 and BF16 (converted to float).
// Writes are atomic: a temporary file beside the target, fsync, rename.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/tensor.h"

namespace moe {

struct TensorFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

void save_safetensors(const std::string& path, const TensorFile& file);
// A tensor to write in the given dtype (F32, BF16 or F16, rounded to nearest even): from `data` when
// set, else from fill(dst), called once with room for its numel floats when its turn comes (one
// tensor's floats in memory at a time: how an export assembles tensors from other ones).
struct OutTensor {
  std::string name;
  std::string dtype = "F32";
  std::vector<int64_t> shape;
  const float* data = nullptr;
  std::function<void(float*)> fill;
};
// Written in the order given (names must be unique), atomically like the other writers.
void save_safetensors(const std::string& path, const std::vector<OutTensor>& tensors,
                      const std::map<std::string, std::string>& metadata);
// The same from tensors held elsewhere, written straight from them (no copy: checkpoints of a million
// PEER experts are gigabytes). Names must be unique; they are stored sorted.
void save_safetensors(const std::string& path, const std::map<std::string, const Tensor*>& tensors,
                      const std::map<std::string, std::string>& metadata);
// Throws moe::Error naming the file and what is wrong (truncated, bad header, offsets out of range...).
TensorFile load_safetensors(const std::string& path);
// Reads each tensor straight from the mapped file into dest(name, shape), which returns the tensor to
// fill (already of that shape) or nullptr to skip it; returns the metadata. No copy of the file in
// memory: loading a checkpoint of gigabytes costs no more than the model it fills.
using TensorDest = std::function<Tensor*(const std::string&, const std::vector<int64_t>&)>;
std::map<std::string, std::string> load_safetensors_into(const std::string& path, const TensorDest& dest);
// The same from bytes in memory (`where` names them in errors); what the file loader and the fuzz
// target call. Any input gives either the tensors or a moe::Error, never a crash or another exception.
// done(src, bytes), when given, is told of each range of buf copied out (the loader drops its pages).
using ReadDone = std::function<void(const char*, size_t)>;
std::map<std::string, std::string> parse_safetensors(const char* buf, size_t size, const std::string& where,
                                                     const TensorDest& dest, const ReadDone& done = {});

// One tensor of a file in memory: its dtype (F32, F64, F16, BF16), shape and raw bytes.
struct SafetensorsEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  size_t numel = 1;
  const char* data = nullptr;
};
struct SafetensorsHeader {
  std::map<std::string, SafetensorsEntry> tensors;
  std::map<std::string, std::string> metadata;
};
// The header of a file in memory, every entry checked against the buffer (as parse_safetensors does).
SafetensorsHeader parse_safetensors_header(const char* buf, size_t size, const std::string& where);
size_t dtype_bytes(const std::string& dtype);  // 0 for a dtype not read here
// Elements [begin, begin + count) of the tensor, as floats.
void convert_to_float(const SafetensorsEntry& e, size_t begin, size_t count, float* dst);

struct MappedFile;
// A safetensors file mapped read-only with its header parsed: tensors are read from it on demand
// (a checkpoint's shards of many gigabytes cost no memory until read, and release() gives pages back).
class MappedSafetensors {
 public:
  explicit MappedSafetensors(const std::string& path);  // throws moe::Error naming the file
  ~MappedSafetensors();
  const SafetensorsHeader& header() const { return header_; }
  void release(const SafetensorsEntry& e) const;  // done with e: its pages leave the resident set

 private:
  std::unique_ptr<MappedFile> file_;
  SafetensorsHeader header_;
};

}  // namespace moe
