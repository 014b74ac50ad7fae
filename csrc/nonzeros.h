// Collecting the non-zeros of a row of sparse codes, shared by csrc/sparse_decode.cpp and
// the vectorized kernels' portable path (csrc/vec_kernels.h, which adds an AVX-512 one).
// Included before any instruction-set pragma (csrc/vec_prelude.h), so it is baseline code.
#pragma once

#include <cstdint>

namespace vsc {

// The non-zeros of row[first * stride], ..., row[(n - 1) * stride], converted to T, in
// ascending order (NaN counts as non-zero, +-0 does not): their positions k in idx and
// values in val; returns their number. Without branches, so that randomly placed
// non-zeros cost no mispredictions (a branch per entry cost more than the products over
// the non-zeros): every entry is written and the count advances by (v != 0), so idx and
// val must hold one entry more than the count returned.
template <typename S, typename T, typename I>
inline int64_t collect_nonzeros_scalar(const S* row, int64_t n, int64_t stride, I* idx, T* val,
                                       int64_t first = 0) {
  int64_t count = 0;
  for (int64_t k = first; k < n; ++k) {
    const T v = static_cast<T>(row[k * stride]);
    idx[count] = static_cast<I>(k);
    val[count] = v;
    count += v != T(0);
  }
  return count;
}

}  // namespace vsc
