// Shared helpers of the op files: dtype mapping for the kernel table, output allocation.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

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

// at::empty, contiguous, for an output the kernel writes in full. (Transparent huge pages
// for large outputs -- madvise(MADV_HUGEPAGE) -- cut the first-touch page faults three-fold
// in isolation but stalled in direct compaction on the shared machine, 2.3x slower: not
// used.)
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace vsc
