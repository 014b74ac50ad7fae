// elbo_select on the CPU: the per-sample squared error and its backward, with the
// semantics of the backend contract in vsc_kernels/elbo_select/reference.py.
//
// Forward: at::parallel_for over the B*J rows of x_hat; each row is reduced against
// its data row x[b] with kLanes independent partial sums (a vectorizable inner loop
// without reassociating one float sum), added pairwise at the end.
// Backward: at::parallel_for over tasks (b, column chunk); a task loops over the J
// samples of row b, writes 2 g (x_hat - x) (zeros, without reading x_hat, when
// g == 0) and accumulates -sum_j of it in a small buffer for grad_x.
//
// x is converted once to the compute type (float32, float64 for float64 inputs; it
// is J times smaller than x_hat); x_hat is read in place in its own dtype.

#include "elbo_select.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

namespace vsc {
namespace {

constexpr int64_t kLanes = 16;
// Columns per backward task at most (the grad_x accumulator lives on the stack).
constexpr int64_t kChunk = 2048;
// Elements a task should at least get before going parallel.
constexpr int64_t kMinWork = 32768;

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

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

template <typename S, typename T>
T row_squared_error(const S* __restrict h, const T* __restrict x, int64_t n) {
  T acc[kLanes] = {};
  int64_t f = 0;
  for (; f + kLanes <= n; f += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      const T d = static_cast<T>(h[f + k]) - x[f + k];
      acc[k] += d * d;
    }
  }
  for (int64_t k = 0; f < n; ++f, ++k) {
    const T d = static_cast<T>(h[f]) - x[f];
    acc[k] += d * d;
  }
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
    for (int64_t k = 0; k < width; ++k) acc[k] += acc[k + width];
  }
  return acc[0];
}

template <typename S, typename T>
void forward_kernel(const at::Tensor& xc, const at::Tensor& xh, at::Tensor& out) {
  const int64_t B = xh.size(0), J = xh.size(1), F = xh.size(2);
  const int64_t s_b = xh.stride(0), s_j = xh.stride(1);
  const S* h = xh.const_data_ptr<S>();
  const T* x = xc.const_data_ptr<T>();
  T* e = out.mutable_data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, kMinWork / std::max<int64_t>(F, 1));
  at::parallel_for(0, B * J, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / J, j = r - b * J;
      e[r] = row_squared_error<S, T>(h + b * s_b + j * s_j, x + b * F, F);
    }
  });
}

template <typename S, typename T>
void backward_kernel(const T* g, const at::Tensor& xc, const at::Tensor& xh, at::Tensor& grad_xh,
                     T* grad_x) {
  const int64_t B = xh.size(0), J = xh.size(1), F = xh.size(2);
  const int64_t s_b = xh.stride(0), s_j = xh.stride(1);
  const S* h = xh.const_data_ptr<S>();
  const T* x = xc.const_data_ptr<T>();
  S* out = grad_xh.mutable_data_ptr<S>();
  const int64_t chunk = std::min<int64_t>(F, kChunk);
  const int64_t n_chunks = (F + chunk - 1) / chunk;
  const int64_t grain = std::max<int64_t>(1, kMinWork / std::max<int64_t>(J * chunk, 1));
  at::parallel_for(0, B * n_chunks, grain, [&](int64_t begin, int64_t end) {
    T acc[kChunk];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / n_chunks;
      const int64_t f0 = (t - b * n_chunks) * chunk;
      const int64_t n = std::min<int64_t>(chunk, F - f0);
      const T* xr = x + b * F + f0;
      if (grad_x) std::fill(acc, acc + n, T(0));
      for (int64_t j = 0; j < J; ++j) {
        const T gg = g[b * J + j];
        S* o = out + (b * J + j) * F + f0;
        if (gg == T(0)) {
          std::fill(o, o + n, S(0));
          continue;
        }
        const T two_g = T(2) * gg;
        const S* hr = h + b * s_b + j * s_j + f0;
        if (grad_x) {
          for (int64_t f = 0; f < n; ++f) {
            const T v = two_g * (static_cast<T>(hr[f]) - xr[f]);
            o[f] = static_cast<S>(v);
            acc[f] += v;
          }
        } else {
          for (int64_t f = 0; f < n; ++f) {
            o[f] = static_cast<S>(two_g * (static_cast<T>(hr[f]) - xr[f]));
          }
        }
      }
      if (grad_x) {
        T* gx = grad_x + b * F + f0;
        for (int64_t f = 0; f < n; ++f) gx[f] = -acc[f];
      }
    }
  });
}

}  // namespace

at::Tensor elbo_select_squared_error(const at::Tensor& x, const at::Tensor& x_hat) {
  check_inputs(x, x_hat);
  const at::ScalarType compute = compute_type(x, x_hat);
  const int64_t B = x_hat.size(0), J = x_hat.size(1);
  at::Tensor out = at::zeros({B, J}, x_hat.options().dtype(compute));
  if (out.numel() == 0 || x_hat.size(2) == 0) return out;
  const at::Tensor xc = x.to(compute).contiguous();
  const at::Tensor xh = unit_column_stride(x_hat);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xh.scalar_type(),
                                  "elbo_select_squared_error", [&] {
    if (compute == at::kDouble) {
      forward_kernel<scalar_t, double>(xc, xh, out);
    } else {
      forward_kernel<scalar_t, float>(xc, xh, out);
    }
  });
  return out;
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
  at::Tensor grad_xh =
      at::empty({B, J, F}, x_hat.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_xc;
  if (need_x) grad_xc = at::empty({B, F}, x.options().dtype(compute));
  if (B > 0 && F > 0) {
    const at::Tensor g = grad_sq_err.to(compute).contiguous();
    const at::Tensor xc = x.to(compute).contiguous();
    const at::Tensor xh = unit_column_stride(x_hat);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xh.scalar_type(),
                                    "elbo_select_backward", [&] {
      if (compute == at::kDouble) {
        backward_kernel<scalar_t, double>(g.const_data_ptr<double>(), xc, xh, grad_xh,
                                          need_x ? grad_xc.mutable_data_ptr<double>() : nullptr);
      } else {
        backward_kernel<scalar_t, float>(g.const_data_ptr<float>(), xc, xh, grad_xh,
                                         need_x ? grad_xc.mutable_data_ptr<float>() : nullptr);
      }
    });
  }
  std::optional<at::Tensor> grad_x;
  if (need_x) {
    grad_x = grad_xc.scalar_type() == x.scalar_type() ? grad_xc : grad_xc.to(x.scalar_type());
  }
  return {grad_xh, grad_x};
}

}  // namespace vsc
