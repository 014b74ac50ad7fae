// CPU kernel of sparse_decode: the backend contract of
// vsc_kernels/sparse_decode/reference.py (csr_spmm).
#pragma once

#include <ATen/ATen.h>

namespace vsc {

// CSR (crow (R + 1,) int64, col (nnz,) int64, val (nnz,)) times a dense row-major
// matrix dense (K, Dn), val and dense of one float dtype:
//   out[r, :] = sum_{k = crow[r]}^{crow[r+1]-1} val[k] * dense[col[k], :]
// in float32 (float64 for float64 inputs), summed in the order of k; out (R, Dn) in
// the inputs' dtype. No atomics: each output row belongs to one thread.
at::Tensor csr_spmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                    const at::Tensor& dense);

}  // namespace vsc
