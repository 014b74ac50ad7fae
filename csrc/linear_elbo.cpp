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
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/Dispatch.h>
#include <c10/core/GradMode.h>

#include "cpu_kernels.h"
#include "cpu_memory.h"
#include "selection.h"
#include "sparse_decode.h"

namespace vsc {
namespace {

// Above this fraction of non-zeros the chunk goes through the dense GEMM.
constexpr double kSparseDensity = 0.25;

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

// Whether every value of t (contiguous, float or double) is finite; read directly (no ATen
// op, so no host synchronisation is recorded). The sparse paths skip the codes' zeros, so a
// NaN or inf in A or in the residuals would not reach the outputs that the dense product
// (0 * nan = nan) makes NaN: they run only when these are finite (the non-finite policy).
// The test is on the bits (finite iff the exponent is not all ones), OR-reduced over the
// tensor: integer and associative, so the loop vectorizes (std::isfinite's did not).
template <typename Bits>
bool all_finite_bits(const void* data, int64_t n, Bits exponent) {
  const char* p = static_cast<const char*>(data);
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    Bits b;
    std::memcpy(&b, p + i * sizeof(Bits), sizeof(Bits));
    bad |= static_cast<Bits>((b & exponent) == exponent);
  }
  return bad == 0;
}

bool all_finite(const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble),
              "all_finite: contiguous float or double expected");
  if (t.scalar_type() == at::kFloat) {
    return all_finite_bits<uint32_t>(t.const_data_ptr(), t.numel(), 0x7F800000u);
  }
  return all_finite_bits<uint64_t>(t.const_data_ptr(), t.numel(), 0x7FF0000000000000ull);
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
  const bool sparse_allowed = all_finite(At);
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
    const bool sparse = sparse_allowed &&
                        static_cast<double>(nnz) <= kSparseDensity * static_cast<double>(n * d);
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
  const at::Tensor xw = x.scalar_type() == work && x.is_contiguous() ? x : x.to(work).contiguous();
  const at::Tensor Aw = A.scalar_type() == work ? A : A.to(work);
  return {xw, Aw.t().contiguous()};
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
  linear_rows(p.x, z, p.At, nullptr, nullptr, &E, nullptr, chunk_elements);
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
  const int64_t nnz = linear_rows(p.x, z, p.At,
                                  sel.defined() ? sel.const_data_ptr<int64_t>() : nullptr, &gc,
                                  nullptr, &residual, chunk_elements);
  return {residual, nnz};
}

namespace {

// grad_A += -2 gr^T z_rows (z_rows (n, d), gr (n, D)) for one block of rows: one GEMM into
// grad_A, or, when the codes' non-zeros are at most kSparseDensity of the block, the
// sparse product over them added to sparse_sum = sum of z_rows^T gr (d, D), created at the
// first sparse block; finish_grad_A adds -2 sparse_sum^T to grad_A once (one transposed
// pass for all blocks, not one per block).
void add_grad_A(at::Tensor& grad_A, at::Tensor& sparse_sum, const at::Tensor& z_rows,
                const at::Tensor& gr, int64_t nnz) {
  const int64_t n = z_rows.size(0), d = z_rows.size(1);
  const at::Tensor zw = z_rows.scalar_type() == gr.scalar_type() ? z_rows : z_rows.to(gr.scalar_type());
  if (static_cast<double>(nnz) <= kSparseDensity * static_cast<double>(n * d) &&
      all_finite(gr)) {
    if (!sparse_sum.defined()) sparse_sum = at::zeros({d, gr.size(1)}, gr.options());
    sparse_decode_grad_weight_t_add(sparse_sum, zw, gr);
  } else {
    grad_A.addmm_(gr.t(), zw, 1.0, -2.0);
  }
}

void finish_grad_A(at::Tensor& grad_A, const at::Tensor& sparse_sum) {
  if (sparse_sum.defined()) grad_A.add_(sparse_sum.t(), -2.0);
}

// Small problems: the whole backward as plain loops over the rows (no ATen op per block,
// which costs more than the arithmetic here). Dense arithmetic, so NaN/inf propagate as in
// the reference's products. sel: the selected sample of each row (method "max") or null.
constexpr int64_t kSmallBackward = int64_t{1} << 15;  // B * (J or 1) * d * D at most

template <typename T>
void small_backward(const T* gE, const int64_t* sel, const T* x, const T* z, const T* A,
                    int64_t B, int64_t J, int64_t d, int64_t D, T* gx, T* gz, T* gA) {
  std::vector<T> gr(static_cast<size_t>(D));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t j_begin = sel != nullptr ? sel[b] : 0;
    const int64_t j_end = sel != nullptr ? sel[b] + 1 : J;
    for (int64_t j = j_begin; j < j_end; ++j) {
      const T g = gE[b * J + j];
      const T* zr = z + (b * J + j) * d;
      for (int64_t f = 0; f < D; ++f) {
        T rec = T(0);
        for (int64_t k = 0; k < d; ++k) rec += A[f * d + k] * zr[k];
        gr[f] = (x[b * D + f] - rec) * g;
      }
      if (gx != nullptr) {
        for (int64_t f = 0; f < D; ++f) gx[b * D + f] += T(2) * gr[f];
      }
      if (gz != nullptr) {
        T* out = gz + (b * J + j) * d;
        for (int64_t k = 0; k < d; ++k) {
          T acc = T(0);
          for (int64_t f = 0; f < D; ++f) acc += gr[f] * A[f * d + k];
          out[k] = T(-2) * acc;
        }
      }
      if (gA != nullptr) {
        for (int64_t f = 0; f < D; ++f) {
          const T v = T(-2) * gr[f];
          for (int64_t k = 0; k < d; ++k) gA[f * d + k] += v * zr[k];
        }
      }
    }
  }
}

}  // namespace

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>
linear_elbo_backward(const at::Tensor& grad_E, const std::optional<at::Tensor>& index_opt,
                     const at::Tensor& x_in, const at::Tensor& z_in, const at::Tensor& A_in,
                     bool need_x, bool need_z, bool need_A, int64_t chunk_elements) {
  c10::NoGradGuard no_grad;
  const at::ScalarType work = grad_E.scalar_type();
  at::ScalarType dtype = at::promote_types(at::promote_types(x_in.scalar_type(),
                                                             z_in.scalar_type()), A_in.scalar_type());
  const at::Tensor x = x_in.scalar_type() == dtype ? x_in : x_in.to(dtype);
  const at::Tensor z = z_in.scalar_type() == dtype ? z_in : z_in.to(dtype);
  const at::Tensor A = A_in.scalar_type() == dtype ? A_in : A_in.to(dtype);
  check_shapes(x, z, A);
  const int64_t B = z.size(0), J = z.size(1), d = z.size(2), D = x.size(1);
  TORCH_CHECK(grad_E.dim() == 2 && grad_E.size(0) == B && grad_E.size(1) == J,
              "linear_elbo_backward: grad_E must be (B, J)");
  TORCH_CHECK(work_type(z) == work, "linear_elbo_backward: grad_E must be in the compute dtype");
  const at::TensorOptions opts = grad_E.options();
  const bool has_index = index_opt.has_value() && index_opt->defined();
  const int64_t rows = has_index ? B : B * J;
  if (rows * d * D <= kSmallBackward && rows * D <= chunk_elements) {
    const at::Tensor gE = grad_E.contiguous();
    const at::Tensor index = has_index ? index_opt->to(at::kLong).contiguous() : at::Tensor();
    const at::Tensor xw = x.to(work).contiguous(), zw = z.to(work).contiguous();
    const at::Tensor Aw = A.to(work).contiguous();
    std::optional<at::Tensor> gx, gz, gA;
    if (need_x) gx = at::zeros({B, D}, opts);
    if (need_z) gz = at::zeros({B, J, d}, opts);
    if (need_A) gA = at::zeros({D, d}, opts);
    AT_DISPATCH_FLOATING_TYPES(work, "linear_elbo_small_backward", [&] {
      small_backward<scalar_t>(
          gE.const_data_ptr<scalar_t>(), has_index ? index.const_data_ptr<int64_t>() : nullptr,
          xw.const_data_ptr<scalar_t>(), zw.const_data_ptr<scalar_t>(),
          Aw.const_data_ptr<scalar_t>(), B, J, d, D,
          gx ? gx->mutable_data_ptr<scalar_t>() : nullptr,
          gz ? gz->mutable_data_ptr<scalar_t>() : nullptr,
          gA ? gA->mutable_data_ptr<scalar_t>() : nullptr);
    });
    return {gx, gz, gA};
  }
  const Prepared p = prepare(x, A, work);
  const at::Tensor A_w = A.scalar_type() == work ? A : A.to(work);
  std::optional<at::Tensor> grad_x, grad_z, grad_A;
  if (need_A) grad_A = at::zeros({D, d}, opts);
  if (has_index) {
    // Max ELBO sampling: one residual per row, at the selected sample.
    const at::Tensor index = index_opt->to(at::kLong).contiguous();
    const at::Tensor g = grad_E.gather(1, index.view({B, 1})).view({B});
    at::Tensor gr = at::empty({B, D}, opts);
    const int64_t nnz = linear_rows(p.x, z, p.At, index.const_data_ptr<int64_t>(), &g, nullptr,
                                    &gr, std::max(chunk_elements, D));
    if (need_x) grad_x = gr * 2.0;
    if (need_z || need_A) {
      const at::Tensor z_sel = z.gather(1, index.view({B, 1, 1}).expand({B, 1, d})).view({B, d});
      if (need_z) {
        grad_z = zeroed_output({B, J, d}, opts);   // written at the selected samples only
        grad_z->scatter_(1, index.view({B, 1, 1}).expand({B, 1, d}),
                         at::mm(gr, A_w).mul_(-2.0).view({B, 1, d}));
      }
      if (need_A) {
        at::Tensor sparse_sum;
        add_grad_A(*grad_A, sparse_sum, z_sel, gr, nnz);
        finish_grad_A(*grad_A, sparse_sum);
      }
    }
    return {grad_x, grad_z, grad_A};
  }
  if (need_x) grad_x = at::zeros({B, D}, opts);
  if (need_z) grad_z = at::empty({B, J, d}, opts);
  at::Tensor sparse_sum;  // z^T g r of the sparse blocks (add_grad_A)
  // blocks of whole data rows, or of the samples of one row when J * D is more
  int64_t step_b = 1, step_j = J;
  if (J * D <= chunk_elements) {
    step_b = std::max<int64_t>(1, chunk_elements / std::max<int64_t>(J * D, 1));
  } else {
    step_j = std::max<int64_t>(1, chunk_elements / std::max<int64_t>(D, 1));
  }
  // One buffer for every block's residuals: a fresh one per block let malloc's heap grow
  // by several blocks (peak RSS up to ~7 blocks above the forward's, run to run).
  const at::Tensor gr_buffer = at::empty({std::min(step_b, B) * std::min(step_j, J), D}, opts);
  for (int64_t b0 = 0; b0 < B; b0 += step_b) {
    const int64_t nb = std::min(step_b, B - b0);
    for (int64_t j0 = 0; j0 < J; j0 += step_j) {
      const int64_t m = std::min(step_j, J - j0);
      const at::Tensor z_c = z.narrow(0, b0, nb).narrow(1, j0, m);
      const at::Tensor g_c = grad_E.narrow(0, b0, nb).narrow(1, j0, m).contiguous();
      at::Tensor gr = gr_buffer.narrow(0, 0, nb * m);
      const at::Tensor x_c = p.x.narrow(0, b0, nb);
      const int64_t nnz = linear_rows(x_c, z_c, p.At, nullptr, &g_c, nullptr, &gr,
                                      std::max(chunk_elements, D));
      if (need_x) grad_x->narrow(0, b0, nb).add_(gr.view({nb, m, D}).sum(1), 2.0);
      if (need_z) {
        at::Tensor out = grad_z->narrow(0, b0, nb).narrow(1, j0, m);
        if (out.is_contiguous()) {  // the product straight into grad_z, scaled by -2
          at::Tensor rows_out = out.view({nb * m, d});
          at::addmm_out(rows_out, rows_out, gr, A_w, /*beta=*/0.0, /*alpha=*/-2.0);
        } else {
          out.copy_(at::mm(gr, A_w).mul_(-2.0).view({nb, m, d}));
        }
      }
      if (need_A) add_grad_A(*grad_A, sparse_sum, z_c.reshape({nb * m, d}), gr, nnz);
    }
  }
  if (need_A) finish_grad_A(*grad_A, sparse_sum);
  return {grad_x, grad_z, grad_A};
}

}  // namespace vsc
