#include "core/storage.h"

#include <cstdint>
#include <cstdlib>
#include <new>

#include <sys/mman.h>

namespace moe {

void* aligned_storage(size_t bytes) {
  bytes = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  // The whole 2 MiB pages inside the buffer, for transparent huge pages. The buffer itself keeps the
  // allocator's placement: aligned to 2 MiB, every large buffer would start at the same offset of its
  // huge page, so that two buffers streamed side by side (logits and their gradient) would fall into
  // the same cache sets. Advice only: with THP off the pages stay 4 KiB.
  constexpr std::uintptr_t kHuge = std::uintptr_t{2} << 20;
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (at + kHuge - 1) & ~(kHuge - 1), end = (at + bytes) & ~(kHuge - 1);
  if (end > first) ::madvise(reinterpret_cast<void*>(first), end - first, MADV_HUGEPAGE);
  return p;
}

}  // namespace moe
