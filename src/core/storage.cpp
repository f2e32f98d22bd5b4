#include "core/storage.h"

#include <cstdlib>
#include <new>

#include <sys/mman.h>

namespace moe {

void* aligned_storage(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const bool huge = bytes >= kHuge;
  const size_t align = huge ? kHuge : 64;
  bytes = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, bytes);
  if (!p) throw std::bad_alloc();
  if (huge) ::madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without it (THP off) the pages stay 4 KiB
  return p;
}

}  // namespace moe
