// CPU kernels of sparse_decode: the backend contract of
// vsc_kernels/sparse_decode/reference.py (decode, grad_weight_t).
#pragma once

#include <ATen/ATen.h>

namespace vsc {

// out = z @ At for z (N, d) and At (d, D) of one float dtype, skipping z's zeros:
//   out[n, :] = sum over k with z[n, k] != 0 (ascending) of z[n, k] * At[k, :]
// in float32 (float64 for float64 inputs); out (N, D) in the inputs' dtype.
at::Tensor sparse_decode_forward(const at::Tensor& z, const at::Tensor& At);

// grad_A^T = z^T @ grad_out for z (N, d), grad_out (N, D) of one float dtype:
//   out[k, :] = sum over n with z[n, k] != 0 (ascending) of z[n, k] * grad_out[n, :]
// in float32 (float64 for float64 inputs); out (d, D) in the inputs' dtype.
at::Tensor sparse_decode_grad_weight_t(const at::Tensor& z, const at::Tensor& grad_out);

// out += z^T @ grad_out, out (d, D): for float32 the sums above continued from out's values
// (blocks of rows added in order give the sums over all of them, bit for bit); other
// dtypes add the result of sparse_decode_grad_weight_t.
void sparse_decode_grad_weight_t_add(at::Tensor& out, const at::Tensor& z,
                                     const at::Tensor& grad_out);

}  // namespace vsc
