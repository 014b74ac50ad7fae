// CPU kernels of elbo_select: the backend contract of
// vsc_kernels/elbo_select/reference.py (squared_error, elbo_select_backward).
#pragma once

#include <optional>
#include <string>
#include <tuple>

// ATen only (not torch/extension.h): csrc/bindings.cpp holds the Python binding.
#include <ATen/ATen.h>

namespace vsc {

// x (B, F), x_hat (B, J, F): floating dtypes, may differ; any strides. Returns
// E (B, J), E[b, j] = sum_f (x_hat[b, j, f] - x[b, f])^2, in the compute dtype
// (float32; float64 if x or x_hat is float64).
at::Tensor elbo_select_squared_error(const at::Tensor& x, const at::Tensor& x_hat);

// The fused forward: E, then L = E * scale + beta * kl and the selection over J
// (csrc/selection.h). Returns (loss, per_sample, index, weights) in the compute dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> elbo_select_forward(
    const at::Tensor& x, const at::Tensor& x_hat, const std::optional<at::Tensor>& kl,
    double beta, double scale, const std::string& method);

// grad_sq_err (B, J) = d loss / d E. Returns grad_x_hat (B, J, F) contiguous in
// x_hat's dtype, 2 g (x_hat - x), written as zeros without reading x_hat where
// g == 0; and, if need_x, grad_x (B, F) = -sum_j grad_x_hat in x's dtype.
std::tuple<at::Tensor, std::optional<at::Tensor>> elbo_select_backward(
    const at::Tensor& grad_sq_err, const at::Tensor& x, const at::Tensor& x_hat, bool need_x);

}  // namespace vsc
