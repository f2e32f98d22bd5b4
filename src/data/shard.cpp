#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "core/error.h"
#include "core/files.h"
#include "core/rng.h"

namespace moe {

TokenShard::TokenShard(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot open token shard " + path + "; run `moe data --corpus NAME` first");
  struct stat st {};
  ::fstat(fd, &st);
  if (st.st_size % 2 != 0 || st.st_size == 0) {
    ::close(fd);
    fail("token shard " + path + " is empty or truncated (odd size); rerun `moe data --force`");
  }
  n_ = static_cast<size_t>(st.st_size) / 2;
  void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail("cannot map token shard " + path);
  data_ = static_cast<const uint16_t*>(p);
}

TokenShard::~TokenShard() {
  if (data_) ::munmap(const_cast<uint16_t*>(data_), n_ * 2);
}

void write_token_shard(const std::string& path, const std::vector<int32_t>& ids) {
  std::string bytes(ids.size() * 2, '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    MOE_CHECK(ids[i] >= 0 && ids[i] < 65536, "token id " + std::to_string(ids[i]) + " does not fit a uint16 shard");
    bytes[2 * i] = static_cast<char>(ids[i] & 0xff);
    bytes[2 * i + 1] = static_cast<char>((ids[i] >> 8) & 0xff);
  }
  write_file_atomic(path, bytes);
}

void sample_batch(const TokenShard& shard, int B, int L, uint64_t seed, uint64_t step, int32_t* tokens,
                  int32_t* targets, int first) {
  MOE_CHECK(shard.size() > static_cast<size_t>(L) + 1, "token shard " + shard.path() + " is shorter than one sequence");
  const uint64_t span = shard.size() - static_cast<size_t>(L) - 1;
  for (int b = 0; b < B; ++b) {
    auto w = philox4x32(seed, step * 4096 + static_cast<uint64_t>(first + b), 0x5a3d);
    const uint64_t r = (static_cast<uint64_t>(w[0]) << 32 | w[1]) % span;
    for (int i = 0; i < L; ++i) {
      tokens[b * L + i] = shard[r + static_cast<uint64_t>(i)];
      targets[b * L + i] = shard[r + static_cast<uint64_t>(i) + 1];
    }
  }
}

size_t eval_windows(const TokenShard& shard, int L, size_t max_windows) {
  return std::min(max_windows, (shard.size() - 1) / static_cast<size_t>(L));
}

void eval_window(const TokenShard& shard, int L, size_t i, int32_t* tokens, int32_t* targets) {
  const size_t r = i * static_cast<size_t>(L);
  for (int j = 0; j < L; ++j) {
    tokens[j] = shard[r + static_cast<size_t>(j)];
    targets[j] = shard[r + static_cast<size_t>(j) + 1];
  }
}

}  // namespace moe
