// CPU kernel of linear_elbo's forward: the backend contract of
// vsc_kernels/linear_elbo/reference.py (squared_error).
#pragma once

#include <ATen/ATen.h>

namespace vsc {

// x (B, D), z (B, J, d), A (D, d) of one floating dtype, any strides. Returns
// E (B, J) = ||x_b - A z_bj||^2 in float32 (float64 for float64 inputs), without
// building the (B, J, D) reconstructions.
at::Tensor linear_elbo_squared_error(const at::Tensor& x, const at::Tensor& z,
                                     const at::Tensor& A);

}  // namespace vsc
