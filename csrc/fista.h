// CPU kernel of batched FISTA: the backend contract of
// vsc_kernels/fista/reference.py (fista_solve).
#pragma once

#include <optional>
#include <tuple>

// ATen only (not torch/extension.h): the op files compile several times faster;
// csrc/bindings.cpp holds the Python binding.
#include <ATen/ATen.h>

namespace vsc {

// gram (d, d) symmetric, c (B, d), lam (B,), z0 (B, d): all float32 or all
// float64 (the compute dtype; made contiguous here if needed). Returns codes
// (B, d) in that dtype, n_iter (B,) int32 and converged (B,) bool, with the
// semantics of reference.fista_solve (per-row stopping, frozen rows). With A (D, d)
// given, gram is not used: each iteration multiplies by A^T and A instead (cheaper when
// d > 2 D).
std::tuple<at::Tensor, at::Tensor, at::Tensor> fista_solve(
    const at::Tensor& gram, const at::Tensor& c, const at::Tensor& lam, const at::Tensor& z0,
    double lipschitz, int64_t max_iter, double tol, bool nonneg,
    const std::optional<at::Tensor>& A);

}  // namespace vsc
