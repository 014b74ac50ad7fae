// Shared helpers of the op files: dtype mapping for the kernel table, output allocation.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define VSC_HAVE_MMAP 1
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

// at::empty, contiguous, for an output the kernel writes in full. (Transparent huge pages
// for large outputs -- madvise(MADV_HUGEPAGE) -- cut the first-touch page faults three-fold
// in isolation but stalled in direct compaction on the shared machine, 2.3x slower: not
// used.)
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
}

// Below this size zeroed_output is at::zeros.
constexpr int64_t kLazyZeroBytes = int64_t(4) << 20;

// A zero-filled contiguous tensor for an output the kernel writes only in part: the
// gradients of a max-ELBO selection, where J - 1 of the J samples of every row are zero.
// From kLazyZeroBytes up it is a fresh anonymous mapping, released with munmap when the
// tensor dies: its pages read as zeros and cost nothing until touched. A write allocates
// a zeroed page (what at::empty's first touch costs anyway); a read of an untouched page
// maps the shared zero page, several times cheaper than writing zeros into it. Measured
// at (512, 10, 3*64*64) fp32 with one of ten rows written: 15 ms against 140 ms for
// at::empty plus writing every row, and reading the whole tensor afterwards costs 47 ms
// against 14 ms, so the op and its consumer together take 62 ms instead of 154.
inline at::Tensor zeroed_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const at::TensorOptions opts = options.memory_format(at::MemoryFormat::Contiguous);
#if defined(VSC_HAVE_MMAP)
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(
      c10::typeMetaToScalarType(opts.dtype())));
  if (bytes >= kLazyZeroBytes) {
    void* p = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      const size_t length = static_cast<size_t>(bytes);
      return at::from_blob(p, sizes, [length](void* q) { munmap(q, length); },
                           opts.device(at::kCPU));
    }
  }
#endif
  return at::zeros(sizes, opts);
}

}  // namespace vsc
