#include "core/safetensors.h"

#include "core/half.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/bf16.h"
#include "core/error.h"

namespace moe {

using json = nlohmann::json;

void save_safetensors(const std::string& path, const std::vector<OutTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  size_t offset = 0;
  for (const OutTensor& t : tensors) {
    size_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<size_t>(d);
    const size_t bytes = numel * dtype_bytes(t.dtype);
    MOE_CHECK(t.dtype == "F32" || t.dtype == "BF16" || t.dtype == "F16", "safetensors: cannot write dtype " + t.dtype);
    MOE_CHECK(!header.contains(t.name), "safetensors: tensor " + t.name + " written twice");
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h += ' ';  // keep the data 8-byte aligned, as the format recommends
  unsigned char len[8];
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
  AtomicFile f(path);
  f.write(len, 8);
  f.write(h.data(), h.size());
  std::vector<float> scratch;
  std::vector<uint16_t> half;
  for (const OutTensor& t : tensors) {
    size_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<size_t>(d);
    const float* src = t.data;
    if (!src) {
      scratch.assign(numel, 0.f);
      t.fill(scratch.data());
      src = scratch.data();
    }
    if (t.dtype == "F32") {
      f.write(src, numel * sizeof(float));
      continue;
    }
    half.resize(numel);
    if (t.dtype == "BF16") to_bf16(src, half.data(), numel);
    else for (size_t i = 0; i < numel; ++i) half[i] = float_to_half(src[i]);
    f.write(half.data(), numel * 2);
  }
  f.commit();
}

void save_safetensors(const std::string& path, const std::map<std::string, const Tensor*>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<OutTensor> out;
  for (const auto& [name, t] : tensors) out.push_back({name, "F32", t->shape(), t->data(), {}});
  save_safetensors(path, out, metadata);
}

void save_safetensors(const std::string& path, const TensorFile& file) {
  std::map<std::string, const Tensor*> refs;
  for (const auto& [name, t] : file.tensors) refs[name] = &t;
  save_safetensors(path, refs, file.metadata);
}

// The file mapped read-only (the tensors are converted straight from it: no second copy in memory).
struct MappedFile {
  const char* data = nullptr;
  size_t size = 0;
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) fail("cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      fail("cannot stat " + path + ": " + std::strerror(errno));
    }
    size = static_cast<size_t>(st.st_size);
    if (size > 0) {
      void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        fail("cannot map " + path + ": " + std::strerror(errno));
      }
      data = static_cast<const char*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data) ::munmap(const_cast<char*>(data), size);
  }
  // Done with [p, p + bytes): its pages leave this process's resident set (a gigabyte table read once
  // would otherwise count twice until the end of the load).
  void release(const char* p, size_t bytes) const {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    const size_t b = (static_cast<size_t>(p - data) + page - 1) / page * page, e = static_cast<size_t>(p - data) + bytes;
    if (e > b + page) ::madvise(const_cast<char*>(data) + b, (e - b) / page * page, MADV_DONTNEED);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
};

SafetensorsHeader parse_safetensors_header(const char* buf, size_t size, const std::string& where) {
  if (size < 8) fail(where + " is truncated (" + std::to_string(size) + " bytes, no header length)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(buf[i])) << (8 * i);
  if (n > size - 8) fail(where + " is truncated: header of " + std::to_string(n) + " bytes, file of " + std::to_string(size));
  json header = json::parse(buf + 8, buf + 8 + n, nullptr, false);
  if (header.is_discarded()) fail(where + " has a corrupt JSON header (not valid JSON); the file is damaged, write it again");
  if (!header.is_object()) fail(where + " has a header that is not a JSON object; the file is damaged, write it again");
  const size_t data_start = 8 + n, data_size = size - data_start;
  SafetensorsHeader out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string entry = where + ": tensor '" + it.key() + "'";
    if (it.key() == "__metadata__") {
      if (!it->is_object()) fail(where + ": __metadata__ is not a JSON object of strings; the file is damaged");
      for (auto m = it->begin(); m != it->end(); ++m)
        out.metadata[m.key()] = m->is_string() ? m->get<std::string>() : m->dump();
      continue;
    }
    const json& e = *it;
    if (!e.is_object() || !e.contains("dtype") || !e["dtype"].is_string() || !e.contains("shape") ||
        !e["shape"].is_array() || !e.contains("data_offsets") || !e["data_offsets"].is_array())
      fail(entry + " has a malformed header entry (needs dtype, shape and data_offsets); the file is damaged");
    SafetensorsEntry t;
    t.dtype = e["dtype"].get<std::string>();
    const size_t esize = dtype_bytes(t.dtype);
    if (esize == 0) fail(entry + " has dtype " + t.dtype + "; F32, F64, F16 and BF16 are supported");
    for (const json& d : e["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40))
        fail(entry + " has a shape entry " + d.dump() + " that is not a size; the file is damaged");
      const size_t v = d.get<size_t>();
      if (v != 0 && t.numel > (size_t{1} << 48) / v) fail(entry + " has a shape too large for any file; the file is damaged");
      t.numel *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const json& o = e["data_offsets"];
    if (o.size() != 2 || !o[0].is_number_unsigned() || !o[1].is_number_unsigned())
      fail(entry + " has data_offsets that are not two sizes; the file is damaged");
    const uint64_t b = o[0].get<uint64_t>(), f = o[1].get<uint64_t>();
    if (f < b || f > data_size || f - b != t.numel * esize)
      fail(entry + " has data_offsets outside the file or not matching its shape (truncated or corrupt file)");
    t.data = buf + data_start + b;
    out.tensors.emplace(it.key(), std::move(t));
  }
  return out;
}

size_t dtype_bytes(const std::string& dtype) {
  return dtype == "F32" ? 4 : dtype == "F64" ? 8 : (dtype == "F16" || dtype == "BF16") ? 2 : 0;
}

void convert_to_float(const SafetensorsEntry& e, size_t begin, size_t count, float* dst) {
  MOE_CHECK(begin + count <= e.numel, "safetensors: a read past the end of a tensor");
  const size_t es = dtype_bytes(e.dtype);
  const char* src = e.data + begin * es;
  if (e.dtype == "F32") {
    if (count) std::memcpy(dst, src, 4 * count);
    return;
  }
  for (size_t i = 0; i < count; ++i) {
    if (e.dtype == "F64") {
      double d;
      std::memcpy(&d, src + 8 * i, 8);
      dst[i] = static_cast<float>(d);
    } else {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      if (e.dtype == "F16") {
        dst[i] = half_to_float(h);
      } else {
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&dst[i], &bits, 4);
      }
    }
  }
}

std::map<std::string, std::string> parse_safetensors(const char* buf, size_t size, const std::string& where,
                                                     const TensorDest& dest, const ReadDone& done) {
  const SafetensorsHeader h = parse_safetensors_header(buf, size, where);
  for (const auto& [name, e] : h.tensors) {
    Tensor* dst = dest(name, e.shape);
    if (!dst) continue;
    MOE_CHECK(dst->numel() == e.numel, where + ": tensor '" + name + "' read into a tensor of another size");
    convert_to_float(e, 0, e.numel, dst->data());
    if (done) done(e.data, e.numel * dtype_bytes(e.dtype));
  }
  return h.metadata;
}

MappedSafetensors::MappedSafetensors(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  header_ = parse_safetensors_header(file_->data, file_->size, "safetensors file " + path);
}

MappedSafetensors::~MappedSafetensors() = default;

void MappedSafetensors::release(const SafetensorsEntry& e) const {
  file_->release(e.data, e.numel * dtype_bytes(e.dtype));
}

std::map<std::string, std::string> load_safetensors_into(const std::string& path, const TensorDest& dest) {
  const MappedFile file(path);
  return parse_safetensors(file.data, file.size, "safetensors file " + path, dest,
                           [&](const char* p, size_t bytes) { file.release(p, bytes); });
}

TensorFile load_safetensors(const std::string& path) {
  TensorFile out;
  out.metadata = load_safetensors_into(path, [&](const std::string& name, const std::vector<int64_t>& shape) {
    Tensor& t = out.tensors[name];
    t.resize(shape);
    return &t;
  });
  return out;
}

}  // namespace moe
