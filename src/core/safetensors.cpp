#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moe {

using json = nlohmann::json;

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp." + std::to_string(::getpid())) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd_ < 0) fail("cannot write " + tmp_ + ": " + std::strerror(errno) + "; check the folder exists and is writable");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t w = ::write(fd_, p + done, bytes - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("cannot write " + tmp_ + ": " + std::strerror(errno) + "; check free disk space");
    }
    done += static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  const int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp_.c_str());
    fail("cannot flush " + tmp_ + ": " + std::strerror(errno));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::string err = std::strerror(errno);
    ::unlink(tmp_.c_str());
    fail("cannot rename " + tmp_ + " to " + path_ + ": " + err);
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

void save_safetensors(const std::string& path, const std::map<std::string, const Tensor*>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    size_t bytes = t->numel() * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", t->shape()}, {"data_offsets", {offset, offset + bytes}}};
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
  for (const auto& [name, t] : tensors) f.write(t->data(), t->numel() * sizeof(float));
  f.commit();
}

void save_safetensors(const std::string& path, const TensorFile& file) {
  std::map<std::string, const Tensor*> refs;
  for (const auto& [name, t] : file.tensors) refs[name] = &t;
  save_safetensors(path, refs, file.metadata);
}

static float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal
      exp = 127 - 15 + 1;
      while (!(man & 0x400u)) { man <<= 1; --exp; }
      bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace {
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
}  // namespace

std::map<std::string, std::string> load_safetensors_into(
    const std::string& path, const std::function<Tensor*(const std::string&, const std::vector<int64_t>&)>& dest) {
  const MappedFile file(path);
  const char* buf = file.data;
  const std::string where = "safetensors file " + path;
  if (file.size < 8) fail(where + " is truncated (" + std::to_string(file.size) + " bytes, no header length)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(buf[i])) << (8 * i);
  if (n > file.size - 8) fail(where + " is truncated: header of " + std::to_string(n) + " bytes, file of " + std::to_string(file.size));
  json header;
  try {
    header = json::parse(std::string(buf + 8, n));
  } catch (const std::exception& e) {
    fail(where + " has a corrupt JSON header: " + e.what());
  }
  if (!header.is_object()) fail(where + " has a header that is not a JSON object");
  const size_t data_start = 8 + n, data_size = file.size - data_start;
  std::map<std::string, std::string> metadata;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it->begin(); m != it->end(); ++m)
        metadata[m.key()] = m->is_string() ? m->get<std::string>() : m->dump();
      continue;
    }
    const json& e = *it;
    try {
      std::string dtype = e.at("dtype").get<std::string>();
      std::vector<int64_t> shape = e.at("shape").get<std::vector<int64_t>>();
      auto off = e.at("data_offsets").get<std::vector<size_t>>();
      size_t esize = dtype == "F32" ? 4 : dtype == "F64" ? 8 : (dtype == "F16" || dtype == "BF16") ? 2 : 0;
      if (esize == 0) fail(where + ": tensor '" + it.key() + "' has dtype " + dtype + "; F32, F64, F16 and BF16 are supported");
      size_t numel = shape.empty() ? 0 : 1;
      for (int64_t d : shape) numel *= d >= 0 ? static_cast<size_t>(d) : 0;
      if (off.size() != 2 || off[1] < off[0] || off[1] > data_size || off[1] - off[0] != numel * esize)
        fail(where + ": tensor '" + it.key() + "' has data_offsets outside the file or not matching its shape (truncated or corrupt file)");
      Tensor* dst = dest(it.key(), shape);
      if (!dst) continue;
      Tensor& t = *dst;
      MOE_CHECK(t.numel() == numel, where + ": tensor '" + it.key() + "' read into a tensor of another size");
      const char* src = buf + data_start + off[0];
      if (dtype == "F32") {
        std::memcpy(t.data(), src, 4 * t.numel());
        file.release(src, 4 * t.numel());
      } else {
        for (size_t i = 0; i < t.numel(); ++i) {
          if (dtype == "F64") {
            double d;
            std::memcpy(&d, src + 8 * i, 8);
            t[i] = static_cast<float>(d);
          } else {
            uint16_t h;
            std::memcpy(&h, src + 2 * i, 2);
            if (dtype == "F16") {
              t[i] = half_to_float(h);
            } else {
              uint32_t bits = static_cast<uint32_t>(h) << 16;
              std::memcpy(&t[i], &bits, 4);
            }
          }
        }
      }
    } catch (const json::exception& ex) {
      fail(where + ": tensor '" + it.key() + "' has a malformed header entry: " + ex.what());
    }
  }
  return metadata;
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
