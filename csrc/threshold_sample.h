// CPU kernels of threshold_sample: the backend contract of
// vsc_kernels/threshold_sample/reference.py (threshold_sample_forward /
// threshold_sample_backward), implemented with the noise of philox.h.
#pragma once

#include <optional>
#include <string>
#include <tuple>

// ATen only (not torch/extension.h): the op files compile several times faster;
// csrc/bindings.cpp holds the Python binding.
#include <ATen/ATen.h>

namespace vsc {

// mu, logb: (M, d), same floating dtype, any strides. lam_opt: None or an
// (M, J, d) view (any strides, 0-strides included, any floating dtype); when
// None the scalar lam_value is used. seed: int64 CPU tensor [seed, offset].
// base: "laplace" or "gaussian". Returns z (M, J, d) contiguous in mu's dtype
// and, when return_kl, kl (M,) in the compute dtype (float32, float64 for
// float64 inputs).
std::tuple<at::Tensor, std::optional<at::Tensor>> threshold_sample_forward(
    const at::Tensor& mu, const at::Tensor& logb, const std::optional<at::Tensor>& lam_opt,
    double lam_value, const at::Tensor& seed, int64_t J, const std::string& base,
    double warmup, bool return_kl, double prior_scale);

// grad_z: (M, J, d), any strides and floating dtype; grad_kl_opt: None or (M,).
// estimator: "straight", "subgradient" or "straight_shift". Returns grad_mu,
// grad_logb (M, d) contiguous in mu's dtype (reduced over J in the compute
// dtype) and, when lam_requires_grad, grad_lam (M, J, d) contiguous in the
// compute dtype.
std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> threshold_sample_backward(
    const at::Tensor& grad_z, const std::optional<at::Tensor>& grad_kl_opt, const at::Tensor& mu,
    const at::Tensor& logb, const std::optional<at::Tensor>& lam_opt, double lam_value,
    const at::Tensor& seed, int64_t J, const std::string& base, const std::string& estimator,
    double warmup, double prior_scale, bool lam_requires_grad);

// The instruction set of the vectorized kernels in use: "avx512", "avx2" or "default".
const char* cpu_kernels_capability();

}  // namespace vsc
