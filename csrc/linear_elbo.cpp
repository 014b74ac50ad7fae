// linear_elbo on the CPU: E[b, j] = ||x_b - A z_bj||^2 (reference.squared_error), the
// fused forward (E and the selection of csrc/selection.h in one call), and the scaled
// residuals g (x_b - A z_bj) that the backward needs.
//
// The B * J sample rows are processed in chunks of at most chunk_elements
// reconstructions (the Python side passes reference.CHUNK_ELEMENTS). Per chunk the non-zeros of its codes are counted (one pass over the chunk of z):
//   sparse (density <= kSparseDensity, thresholded codes): each row adds the rows of
//          A^T for its non-zeros only (csrc/vec_kernels.h, linear_rows), nnz * D
//          multiply-adds instead of d * D;
//   dense: one GEMM for the chunk (at::mm_out, multithreaded by BLAS) into a buffer,
//          then the rows are reduced from it in parallel.
// Either way nothing of size (B, J, D) is kept; low-precision inputs are converted to
// the compute type (x and A once, z chunk by chunk on the dense path).

#include "linear_elbo.h"

#include <algorithm>
#include <cstdint>

#include <ATen/Dispatch.h>
#include <c10/core/GradMode.h>

#include "cpu_kernels.h"
#include "selection.h"

namespace vsc {
namespace {

// Above this fraction of non-zeros the chunk goes through the dense GEMM.
constexpr double kSparseDensity = 0.25;

cpu::Dtype dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cpu::Dtype::kFloat;
    case at::kDouble: return cpu::Dtype::kDouble;
    case at::kHalf: return cpu::Dtype::kHalf;
    default: return cpu::Dtype::kBFloat16;
  }
}

void check_shapes(const at::Tensor& x, const at::Tensor& z, const at::Tensor& A) {
  TORCH_CHECK(x.dim() == 2, "linear_elbo: x must be (B, D), got ", x.sizes());
  TORCH_CHECK(z.dim() == 3, "linear_elbo: z must be (B, J, d), got ", z.sizes());
  TORCH_CHECK(A.dim() == 2, "linear_elbo: A must be (D, d), got ", A.sizes());
  TORCH_CHECK(x.size(0) == z.size(0) && A.size(0) == x.size(1) && A.size(1) == z.size(2),
              "linear_elbo: inconsistent shapes x ", x.sizes(), ", z ", z.sizes(), ", A ",
              A.sizes());
  const auto dtype = z.scalar_type();
  TORCH_CHECK(at::isFloatingType(dtype), "linear_elbo: floating dtype expected");
  TORCH_CHECK(x.scalar_type() == dtype && A.scalar_type() == dtype,
              "linear_elbo: x, z and A must share one dtype");
  TORCH_CHECK(x.device().is_cpu() && z.device().is_cpu() && A.device().is_cpu(),
              "linear_elbo: CPU tensors expected");
}

at::ScalarType work_type(const at::Tensor& z) {
  return z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Non-zeros of the codes of kernel rows r0..r1 (see linear_rows; sel indexed by data row).
int64_t count_nonzero_rows(const at::Tensor& z, const int64_t* sel, int64_t r0, int64_t r1,
                           int64_t J) {
  int64_t nnz = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "count_nonzero", [&] {
    const scalar_t* p = z.const_data_ptr<scalar_t>();
    const int64_t d = z.size(2), sb = z.stride(0), sj = z.stride(1), sd = z.stride(2);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = sel != nullptr ? r : r / J;
      const int64_t j = sel != nullptr ? sel[r] : r - b * J;
      const scalar_t* row = p + b * sb + j * sj;
      int64_t count = 0;
      for (int64_t k = 0; k < d; ++k) count += static_cast<float>(row[k * sd]) != 0.0f;
      nnz += count;
    }
  });
  return nnz;
}

// Rows of the sample-row view (sel == nullptr: B * J rows, row b J + j is sample j of data
// row b) or the selected rows (sel: B rows, row b is sample sel[b]). Writes norms (rows,)
// or residual (rows, D) (scaled by g (rows,)), all in the compute type of x and At.
// Processed in chunks of about chunk_elements reconstructions (at least one row).
// Returns the number of non-zeros of the codes.
int64_t linear_rows(const at::Tensor& x, const at::Tensor& z, const at::Tensor& At,
                    const int64_t* sel, const at::Tensor* g, at::Tensor* norms,
                    at::Tensor* residual, int64_t chunk_elements) {
  const int64_t B = z.size(0), d = z.size(2), D = x.size(1);
  const int64_t J = sel != nullptr ? 1 : z.size(1);  // kernel rows per data row
  const int64_t rows = B * J;
  const at::ScalarType work = x.scalar_type();
  const int64_t chunk = std::max<int64_t>(1, chunk_elements / std::max<int64_t>(D, 1));
  cpu::LinearArgs args;
  args.J = J;
  args.d = d;
  args.D = D;
  args.sel = sel;
  args.z = z.const_data_ptr();
  args.z_dtype = dtype_of(z.scalar_type());
  args.z_sb = z.stride(0);
  args.z_sj = z.stride(1);
  args.z_sd = z.stride(2);
  args.x = x.const_data_ptr();
  args.At = At.const_data_ptr();
  args.compute_double = work == at::kDouble;
  const int64_t elt = at::elementSize(work);
  at::Tensor rec_buffer, z_rows;
  int64_t nnz_total = 0;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t n = std::min(chunk, rows - r0);
    cpu::LinearArgs a = args;
    a.rows = n;
    a.row0 = r0;
    if (g != nullptr) a.g = static_cast<const char*>(g->const_data_ptr()) + r0 * elt;
    if (norms != nullptr) a.norms = static_cast<char*>(norms->data_ptr()) + r0 * elt;
    if (residual != nullptr) a.residual = static_cast<char*>(residual->data_ptr()) + r0 * D * elt;
    const int64_t nnz = count_nonzero_rows(z, sel, r0, r0 + n, J);
    nnz_total += nnz;
    const bool sparse = static_cast<double>(nnz) <= kSparseDensity * static_cast<double>(n * d);
    if (!sparse && d > 0) {
      // dense: the chunk's codes in the compute type, one GEMM into the buffer
      if (!z_rows.defined()) {
        if (sel != nullptr) {
          const at::Tensor idx = at::from_blob(const_cast<int64_t*>(sel), {B, 1, 1}, at::kLong);
          z_rows = z.gather(1, idx.expand({B, 1, d})).view({B, d});
        } else {
          z_rows = z.reshape({rows, d});  // a view when z's strides allow it
        }
      }
      at::Tensor zc = z_rows.narrow(0, r0, n);
      if (zc.scalar_type() != work) zc = zc.to(work);
      at::Tensor rec;
      if (residual != nullptr) {
        rec = residual->narrow(0, r0, n);  // the residuals overwrite the products in place
      } else {
        if (!rec_buffer.defined()) rec_buffer = at::empty({std::min(chunk, rows), D}, x.options());
        rec = rec_buffer.narrow(0, 0, n);
      }
      at::mm_out(rec, zc, At);
      a.rec = rec.const_data_ptr();
    }
    cpu::kernels().linear_rows(a);
  }
  return nnz_total;
}

struct Prepared {
  at::Tensor x, At;
};

Prepared prepare(const at::Tensor& x, const at::Tensor& A, at::ScalarType work) {
  // x and A are small next to z: converted once; At (d, D) contiguous for the row gathers
  return {x.detach().to(work).contiguous(), A.detach().to(work).t().contiguous()};
}

}  // namespace

at::Tensor linear_elbo_squared_error(const at::Tensor& x, const at::Tensor& z,
                                     const at::Tensor& A, int64_t chunk_elements) {
  check_shapes(x, z, A);
  c10::NoGradGuard no_grad;
  const at::ScalarType work = work_type(z);
  const int64_t B = z.size(0), J = z.size(1);
  at::Tensor E = at::empty({B, J}, z.options().dtype(work));
  if (B == 0 || J == 0) return E;
  if (x.size(1) == 0) return E.zero_();
  const Prepared p = prepare(x, A, work);
  linear_rows(p.x, z.detach(), p.At, nullptr, nullptr, &E, nullptr, chunk_elements);
  return E;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_elbo_forward(
    const at::Tensor& x, const at::Tensor& z, const at::Tensor& A,
    const std::optional<at::Tensor>& kl, double beta, double scale, const std::string& method,
    int64_t chunk_elements) {
  const at::Tensor E = linear_elbo_squared_error(x, z, A, chunk_elements);
  return select_tensors(E, kl, beta, scale, method);
}

std::tuple<at::Tensor, int64_t> linear_elbo_residual(const at::Tensor& x, const at::Tensor& z,
                                                     const at::Tensor& A, const at::Tensor& g,
                                                     const std::optional<at::Tensor>& sel_opt,
                                                     int64_t chunk_elements) {
  check_shapes(x, z, A);
  c10::NoGradGuard no_grad;
  const at::ScalarType work = work_type(z);
  const int64_t B = z.size(0), J = z.size(1), D = x.size(1);
  at::Tensor sel;
  if (sel_opt.has_value() && sel_opt->defined()) {
    sel = sel_opt->to(at::kLong).contiguous();
    TORCH_CHECK(sel.dim() == 1 && sel.size(0) == B, "linear_elbo_residual: index must be (B,)");
  }
  const int64_t rows = sel.defined() ? B : B * J;
  const at::Tensor gc = g.to(work).contiguous().view({rows});
  at::Tensor residual = at::empty({rows, D}, z.options().dtype(work));
  if (rows == 0 || D == 0) return {residual, 0};
  const Prepared p = prepare(x, A, work);
  const int64_t nnz = linear_rows(p.x, z.detach(), p.At,
                                  sel.defined() ? sel.const_data_ptr<int64_t>() : nullptr, &gc,
                                  nullptr, &residual, chunk_elements);
  return {residual, nnz};
}

}  // namespace vsc
