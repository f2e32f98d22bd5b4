// storage.h — the aligned heap storage behind Tensor and the bf16 buffers.
#pragma once
#include <cstddef>

namespace moe {

// `bytes` of storage (rounded up to 64), 64-byte aligned, released with std::free. The whole 2 MiB
// pages inside it are marked for transparent huge pages (madvise(MADV_HUGEPAGE), which the kernel's
// default "madvise" mode honours): a GEMM, a KV cache or a decode step streaming through a large buffer
// then misses the TLB once per 2 MiB instead of once per 4 KiB. Throws std::bad_alloc.
void* aligned_storage(size_t bytes);

}  // namespace moe
