// Shared helpers of the op files: dtype mapping for the kernel table and large outputs.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu_kernels.h"

namespace vsc {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline cpu::Dtype dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cpu::Dtype::kFloat;
    case at::kDouble: return cpu::Dtype::kDouble;
    case at::kHalf: return cpu::Dtype::kHalf;
    default: return cpu::Dtype::kBFloat16;
  }
}

// at::empty for an output the kernel writes in full. A large fresh allocation is mapped
// lazily by the kernel, 4 KB page by page on first touch (for a 335 MB output about
// 190 ms of page faults on one core, more than the kernel itself); asking for
// transparent huge pages on it (Linux, THP in "madvise" mode) cuts that about three-fold.
// Harmless where THP is off or the memory is already mapped.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(out.nbytes());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = end & ~(kHuge - 1);
  if (out.nbytes() >= (uintptr_t{8} << 20) && last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return out;
}

}  // namespace vsc
