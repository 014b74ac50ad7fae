// elbo_select on the CPU: the per-sample squared error and its backward, with the
// semantics of the backend contract in vsc_kernels/elbo_select/reference.py.
//
// The kernels are in csrc/vec_kernels.h (vectorized per instruction set):
// Forward: at::parallel_for over the B*J rows of x_hat; each row is reduced against
// its data row x[b] in vector lanes (two accumulators), summed at the end.
// Backward: at::parallel_for over tasks (b, column chunk); a task loops over the J
// samples of row b, writes 2 g (x_hat - x) and accumulates -sum_j of it in a small
// buffer for grad_x. Where g == 0 (the unselected samples of max-ELBO selection) it
// neither reads x_hat nor writes: the gradient comes zero-filled from zeroed_output
// (csrc/cpu_memory.h), whose untouched pages cost nothing. A gradient larger than
// 16 MiB is written with streaming (non-temporal) stores: it is written once and far
// larger than the caches.
//
// x is converted once to the compute type (float32, float64 for float64 inputs; it
// is J times smaller than x_hat); x_hat is read in place in its own dtype.

#include "elbo_select.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/Dispatch.h>

#include "cpu_kernels.h"
#include "cpu_memory.h"
#include "selection.h"

namespace vsc {
namespace {

at::ScalarType compute_type(const at::Tensor& x, const at::Tensor& x_hat) {
  return (x.scalar_type() == at::kDouble || x_hat.scalar_type() == at::kDouble) ? at::kDouble
                                                                                 : at::kFloat;
}

void check_inputs(const at::Tensor& x, const at::Tensor& x_hat) {
  TORCH_CHECK(x.device().is_cpu() && x_hat.device().is_cpu(),
              "elbo_select (C++ backend): x and x_hat must be CPU tensors");
  TORCH_CHECK(is_supported_float(x.scalar_type()) && is_supported_float(x_hat.scalar_type()),
              "elbo_select: x and x_hat must be float16, bfloat16, float32 or float64, got ",
              x.scalar_type(), " and ", x_hat.scalar_type());
  TORCH_CHECK(x_hat.dim() == 3 && x.dim() == 2 && x.size(0) == x_hat.size(0) &&
                  x.size(1) == x_hat.size(2),
              "elbo_select: expected x (B, F) and x_hat (B, J, F), got ", x.sizes(), " and ",
              x_hat.sizes());
}

// x_hat with unit column stride (a copy only if it has none).
at::Tensor unit_column_stride(const at::Tensor& x_hat) {
  return (x_hat.size(2) <= 1 || x_hat.stride(2) == 1) ? x_hat : x_hat.contiguous();
}

cpu::SquaredErrorArgs make_args(const at::Tensor& xc, const at::Tensor& xh, bool double_math) {
  cpu::SquaredErrorArgs a;
  a.B = xh.size(0);
  a.J = xh.size(1);
  a.F = xh.size(2);
  a.x = xc.data_ptr();
  a.x_hat = xh.data_ptr();
  a.xh_dtype = dtype_of(xh.scalar_type());
  a.xh_sb = xh.stride(0);
  a.xh_sj = xh.stride(1);
  a.compute_double = double_math;
  return a;
}

}  // namespace

at::Tensor elbo_select_squared_error(const at::Tensor& x, const at::Tensor& x_hat) {
  check_inputs(x, x_hat);
  const at::ScalarType compute = compute_type(x, x_hat);
  const int64_t B = x_hat.size(0), J = x_hat.size(1);
  if (B * J == 0 || x_hat.size(2) == 0) return at::zeros({B, J}, x_hat.options().dtype(compute));
  at::Tensor out = at::empty({B, J}, x_hat.options().dtype(compute));
  const at::Tensor xc = x.to(compute).contiguous();
  const at::Tensor xh = unit_column_stride(x_hat);
  cpu::SquaredErrorArgs args = make_args(xc, xh, compute == at::kDouble);
  args.out = out.data_ptr();
  cpu::kernels().elbo_squared_error(args);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> elbo_select_forward(
    const at::Tensor& x, const at::Tensor& x_hat, const std::optional<at::Tensor>& kl,
    double beta, double scale, const std::string& method) {
  at::Tensor E = elbo_select_squared_error(x, x_hat);
  if (kl.has_value() && kl->defined() && kl->scalar_type() == at::kDouble &&
      E.scalar_type() != at::kDouble) {
    E = E.to(at::kDouble);  // the work dtype follows kl's too (reference.result_dtype)
  }
  return select_tensors(E, kl, beta, scale, method);
}

std::tuple<at::Tensor, std::optional<at::Tensor>> elbo_select_backward(
    const at::Tensor& grad_sq_err, const at::Tensor& x, const at::Tensor& x_hat, bool need_x) {
  check_inputs(x, x_hat);
  const at::ScalarType compute = compute_type(x, x_hat);
  const int64_t B = x_hat.size(0), J = x_hat.size(1), F = x_hat.size(2);
  TORCH_CHECK(grad_sq_err.device().is_cpu() && is_supported_float(grad_sq_err.scalar_type()),
              "elbo_select (C++ backend): grad_sq_err must be a floating CPU tensor");
  TORCH_CHECK(grad_sq_err.dim() == 2 && grad_sq_err.size(0) == B && grad_sq_err.size(1) == J,
              "elbo_select: grad_sq_err must have shape (B, J) = (", B, ", ", J, "), got ",
              grad_sq_err.sizes());
  const at::Tensor g = grad_sq_err.to(compute).contiguous();
  // The kernel writes only the samples with a non-zero weight: one of J under max-ELBO
  // selection, where the gradient comes zero-filled; every one under avg and IWAE, where
  // filling it first with zeros would only add a pass over it (at the paper's shape,
  // (100, 20, 256), a fifth of the backward).
  bool every_sample = true;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "elbo_select_backward", [&] {
    const scalar_t* w = g.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < g.numel(); ++i) every_sample &= w[i] != scalar_t(0);
  });
  at::Tensor grad_xh = every_sample ? empty_output({B, J, F}, x_hat.options())
                                    : zeroed_output({B, J, F}, x_hat.options());
  at::Tensor grad_xc;
  if (need_x) grad_xc = at::empty({B, F}, x.options().dtype(compute));
  if (B > 0 && F > 0) {
    const at::Tensor xc = x.to(compute).contiguous();
    const at::Tensor xh = unit_column_stride(x_hat);
    cpu::SquaredErrorArgs args = make_args(xc, xh, compute == at::kDouble);
    args.g = g.data_ptr();
    args.grad_x_hat = grad_xh.data_ptr();
    args.grad_x = need_x ? grad_xc.data_ptr() : nullptr;
    args.every_sample = every_sample;
    if (J > 0) {
      cpu::kernels().elbo_backward(args);
    } else if (need_x) {
      grad_xc.zero_();
    }
  } else if (need_x) {
    grad_xc.zero_();
  }
  std::optional<at::Tensor> grad_x;
  if (need_x) {
    grad_x = grad_xc.scalar_type() == x.scalar_type() ? grad_xc : grad_xc.to(x.scalar_type());
  }
  return {grad_xh, grad_x};
}

}  // namespace vsc
