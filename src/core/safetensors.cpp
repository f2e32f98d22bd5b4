#include "core/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace moe {

using json = nlohmann::json;

void write_file_atomic(const std::string& path, const std::string& bytes) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("cannot write " + tmp + ": " + std::strerror(errno) + "; check the folder exists and is writable");
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      std::string err = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("cannot write " + tmp + ": " + err + "; check free disk space");
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail("cannot flush " + tmp + ": " + std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    fail("cannot rename " + tmp + " to " + path + ": " + err);
  }
}

void save_safetensors(const std::string& path, const TensorFile& file) {
  json header = json::object();
  size_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    size_t bytes = t.numel() * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", t.shape()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h += ' ';  // keep the data 8-byte aligned, as the format recommends
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += h;
  for (const auto& [name, t] : file.tensors)
    out.append(reinterpret_cast<const char*>(t.data()), t.numel() * sizeof(float));
  write_file_atomic(path, out);
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

TensorFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string buf = ss.str();
  const std::string where = "safetensors file " + path;
  if (buf.size() < 8) fail(where + " is truncated (" + std::to_string(buf.size()) + " bytes, no header length)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(buf[i])) << (8 * i);
  if (n > buf.size() - 8) fail(where + " is truncated: header of " + std::to_string(n) + " bytes, file of " + std::to_string(buf.size()));
  json header;
  try {
    header = json::parse(buf.substr(8, n));
  } catch (const std::exception& e) {
    fail(where + " has a corrupt JSON header: " + e.what());
  }
  if (!header.is_object()) fail(where + " has a header that is not a JSON object");
  const size_t data_start = 8 + n, data_size = buf.size() - data_start;
  TensorFile out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it->begin(); m != it->end(); ++m)
        out.metadata[m.key()] = m->is_string() ? m->get<std::string>() : m->dump();
      continue;
    }
    const json& e = *it;
    try {
      std::string dtype = e.at("dtype").get<std::string>();
      std::vector<int64_t> shape = e.at("shape").get<std::vector<int64_t>>();
      auto off = e.at("data_offsets").get<std::vector<size_t>>();
      size_t esize = dtype == "F32" ? 4 : dtype == "F64" ? 8 : (dtype == "F16" || dtype == "BF16") ? 2 : 0;
      if (esize == 0) fail(where + ": tensor '" + it.key() + "' has dtype " + dtype + "; F32, F64, F16 and BF16 are supported");
      Tensor t(shape);
      if (off.size() != 2 || off[1] < off[0] || off[1] > data_size || off[1] - off[0] != t.numel() * esize)
        fail(where + ": tensor '" + it.key() + "' has data_offsets outside the file or not matching its shape (truncated or corrupt file)");
      const char* src = buf.data() + data_start + off[0];
      for (size_t i = 0; i < t.numel(); ++i) {
        if (dtype == "F32") {
          std::memcpy(&t[i], src + 4 * i, 4);
        } else if (dtype == "F64") {
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
      out.tensors.emplace(it.key(), std::move(t));
    } catch (const json::exception& ex) {
      fail(where + ": tensor '" + it.key() + "' has a malformed header entry: " + ex.what());
    }
  }
  return out;
}

}  // namespace moe
