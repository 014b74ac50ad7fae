// linear_elbo's forward on the CPU: E[b, j] = ||x_b - A z_bj||^2 with the
// semantics of reference.squared_error.
//
// The M = B * J sample rows of z (row m is sample m % J of data row m / J) are
// cut into blocks whose reconstructions fit in a thread-local (rows x D) buffer
// of about 64K elements (cache-sized; one row if D is larger). Threads take
// blocks from at::parallel_for; per block:
//   R = Z_blk @ A^T        one GEMM (at::mm_out, single-threaded inside the
//                          parallel region) into the thread's buffer
//   E[m] = sum_k (x_b[k] - R[m, k])^2    one pass per row, 8 partial sums
// so memory beyond the inputs is threads x buffer, never (B * J, D). Low-precision
// inputs are converted to the compute dtype block by block (x and A once).

#include "linear_elbo.h"

#include <algorithm>
#include <cstdint>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

namespace vsc {
namespace {

constexpr int64_t kBufferElements = 1 << 16;

// E[m0 + i] for the rows i < rows of one block, from its reconstructions rec (rows x D).
template <typename scalar_t>
void reduce_rows(const scalar_t* x, const scalar_t* rec, int64_t m0, int64_t rows, int64_t J,
                 int64_t D, scalar_t* out) {
  constexpr int kLanes = 8;
  for (int64_t i = 0; i < rows; ++i) {
    const scalar_t* xr = x + ((m0 + i) / J) * D;
    const scalar_t* rr = rec + i * D;
    scalar_t acc[kLanes] = {0};
    int64_t k = 0;
    for (; k + kLanes <= D; k += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const scalar_t r = xr[k + l] - rr[k + l];
        acc[l] += r * r;
      }
    }
    for (; k < D; ++k) {
      const scalar_t r = xr[k] - rr[k];
      acc[0] += r * r;
    }
    scalar_t total = 0;
    for (int l = 0; l < kLanes; ++l) total += acc[l];
    out[m0 + i] = total;
  }
}

template <typename scalar_t>
void squared_error(const at::Tensor& x, const at::Tensor& z2, const at::Tensor& At, int64_t J,
                   at::Tensor& E) {
  const int64_t M = z2.size(0);
  const int64_t D = x.size(1);
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  scalar_t* e_ptr = E.mutable_data_ptr<scalar_t>();
  const auto work = E.scalar_type();

  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Rows per block: the buffer budget (at least one row), but at least 4 blocks per
  // thread when there are enough rows.
  const int64_t by_buffer = std::max<int64_t>(1, kBufferElements / std::max<int64_t>(D, 1));
  const int64_t by_balance = std::max<int64_t>(1, M / (4 * threads));
  const int64_t block = std::min(by_buffer, by_balance);
  const int64_t n_blocks = (M + block - 1) / block;

  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    // Worker threads do not inherit the caller's autograd exclusion: no graph here.
    c10::NoGradGuard no_grad;
    at::Tensor buffer = at::empty({block, D}, E.options());
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t m0 = blk * block;
      const int64_t rows = std::min(block, M - m0);
      at::Tensor zb = z2.narrow(0, m0, rows);
      if (zb.scalar_type() != work) zb = zb.to(work);
      at::Tensor rec = buffer.narrow(0, 0, rows);
      at::mm_out(rec, zb, At);
      reduce_rows<scalar_t>(x_ptr, rec.const_data_ptr<scalar_t>(), m0, rows, J, D, e_ptr);
    }
  });
}

}  // namespace

at::Tensor linear_elbo_squared_error(const at::Tensor& x_in, const at::Tensor& z_in,
                                     const at::Tensor& A_in) {
  TORCH_CHECK(x_in.dim() == 2, "linear_elbo_squared_error: x must be (B, D), got ",
              x_in.sizes());
  TORCH_CHECK(z_in.dim() == 3, "linear_elbo_squared_error: z must be (B, J, d), got ",
              z_in.sizes());
  TORCH_CHECK(A_in.dim() == 2, "linear_elbo_squared_error: A must be (D, d), got ",
              A_in.sizes());
  const int64_t B = z_in.size(0);
  const int64_t J = z_in.size(1);
  const int64_t d = z_in.size(2);
  const int64_t D = x_in.size(1);
  TORCH_CHECK(x_in.size(0) == B && A_in.size(0) == D && A_in.size(1) == d,
              "linear_elbo_squared_error: inconsistent shapes x ", x_in.sizes(), ", z ",
              z_in.sizes(), ", A ", A_in.sizes());
  const auto dtype = z_in.scalar_type();
  TORCH_CHECK(at::isFloatingType(dtype), "linear_elbo_squared_error: floating dtype expected");
  TORCH_CHECK(x_in.scalar_type() == dtype && A_in.scalar_type() == dtype,
              "linear_elbo_squared_error: x, z and A must share one dtype");
  TORCH_CHECK(x_in.device().is_cpu() && z_in.device().is_cpu() && A_in.device().is_cpu(),
              "linear_elbo_squared_error: CPU tensors expected");

  const auto work = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor E = at::empty({B, J}, z_in.options().dtype(work));
  if (B == 0 || J == 0) return E;
  // x and A are small next to z (B x D and D x d): converted once.
  const at::Tensor x = x_in.detach().to(work).contiguous();
  const at::Tensor At = A_in.detach().to(work).t();  // (d, D) view; BLAS takes it transposed
  if (D == 0) return E.zero_();
  // The B * J sample rows: a view when z's strides allow it, else one copy of z (never
  // of the reconstructions).
  const at::Tensor z2 = z_in.detach().reshape({B * J, d});

  AT_DISPATCH_FLOATING_TYPES(work, "linear_elbo_squared_error", [&] {
    squared_error<scalar_t>(x, z2, At, J, E);
  });
  return E;
}

}  // namespace vsc
