// safetensors.h — read and write the safetensors format (8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then raw little-endian data).
// F32 tensors are what moe.cpp stores; reading also accepts F64, F16 and BF16 (converted to float).
// Writes are atomic: a temporary file beside the target, fsync, rename.
#pragma once
#include <map>
#include <string>

#include "core/tensor.h"

namespace moe {

struct TensorFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

void save_safetensors(const std::string& path, const TensorFile& file);
// Throws moe::Error naming the file and what is wrong (truncated, bad header, offsets out of range...).
TensorFile load_safetensors(const std::string& path);

// Write `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace moe
