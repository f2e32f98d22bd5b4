// libFuzzer target: the safetensors reader (header length, JSON header, dtypes, shapes, offsets) on
// arbitrary bytes. Any input must give the tensors or a moe::Error; another exception, a crash, a
// sanitizer report or an allocation beyond the input's size is a finding.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "core/error.h"
#include "core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::map<std::string, moe::Tensor> tensors;
  try {
    moe::parse_safetensors(reinterpret_cast<const char*>(data), size, "fuzz input",
                           [&](const std::string& name, const std::vector<int64_t>& shape) {
                             moe::Tensor& t = tensors[name];
                             t.resize(shape);
                             return &t;
                           });
  } catch (const moe::Error&) {
  }
  return 0;
}
