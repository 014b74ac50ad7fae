// CPU kernel of linear_elbo's forward: the backend contract of
// vsc_kernels/linear_elbo/reference.py (squared_error).
#pragma once

#include <optional>
#include <string>
#include <tuple>

#include <ATen/ATen.h>

namespace vsc {

// x (B, D), z (B, J, d), A (D, d) of one floating dtype, any strides. Returns
// E (B, J) = ||x_b - A z_bj||^2 in float32 (float64 for float64 inputs), without
// building the (B, J, D) reconstructions.
// chunk_elements: reconstructions held at a time (at least one row of D).
at::Tensor linear_elbo_squared_error(const at::Tensor& x, const at::Tensor& z,
                                     const at::Tensor& A, int64_t chunk_elements);

// The fused forward: E, then L = E * scale + beta * kl and the selection over J
// (method "max", "avg", "iwae" or "softmin"; csrc/selection.h). kl: None, (B,) or (B, J).
// Returns (loss (), per_sample (B, J), index (B,) int64, weights (B, J)) in the compute
// dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_elbo_forward(
    const at::Tensor& x, const at::Tensor& z, const at::Tensor& A,
    const std::optional<at::Tensor>& kl, double beta, double scale, const std::string& method,
    int64_t chunk_elements);

// g (B, J) (or (B,) with index): the residuals g[b, j] (x_b - A z_bj) as a (B * J, D)
// matrix in the compute dtype, or with index (B,) only the selected samples, (B, D).
// Also returns the number of non-zeros of the codes used.
std::tuple<at::Tensor, int64_t> linear_elbo_residual(const at::Tensor& x, const at::Tensor& z,
                                                     const at::Tensor& A, const at::Tensor& g,
                                                     const std::optional<at::Tensor>& index,
                                                     int64_t chunk_elements);

// The backward contract of reference.linear_elbo_backward: grad_E (B, J) in the compute
// dtype, index (B,) for method "max" (only the selected samples' residuals) or None;
// blocks of at most chunk_elements residuals. Returns grad_x (B, D), grad_z (B, J, d),
// grad_A (D, d) in the compute dtype (None where not needed). grad_A skips the zeros of
// sparse codes (csrc/sparse_decode.cpp).
std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>
linear_elbo_backward(const at::Tensor& grad_E, const std::optional<at::Tensor>& index,
                     const at::Tensor& x, const at::Tensor& z, const at::Tensor& A, bool need_x,
                     bool need_z, bool need_A, int64_t chunk_elements);

}  // namespace vsc
