// Batched FISTA on the CPU, with the semantics of reference.fista_solve.
//
// Rows are independent, so the batch is cut into blocks of rows and each
// block is solved start to finish by one thread (persistent: no barrier per
// iteration). Threads take blocks from a shared atomic counter (dynamic
// scheduling: blocks whose rows stop early finish early). Per block the
// thread keeps y, z_{k-1} (and the block's c, thresholds, row ids) in its own
// buffers; each iteration is
//   V = Y_active @ G            one small GEMM (at::mm_out: MKL/OpenBLAS, run
//                               single-threaded inside the parallel region)
//   one fused pass per row      prox, momentum, ||z_k - z_{k-1}||, ||z_k||
// and rows that stop are written out and compacted away, so later
// iterations only multiply the rows still running.
//
// Scalars (step, thresholds, momentum coefficient, tol) are rounded to the
// compute dtype as PyTorch does for a Python scalar times a tensor; the
// momentum schedule t_k is computed in double.

#include "fista.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

namespace vsc {
namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename scalar_t>
void solve(const at::Tensor& gram, const at::Tensor& A, const at::Tensor& c, const at::Tensor& lam,
           const at::Tensor& z0, double lipschitz, int64_t max_iter, double tol, bool nonneg,
           at::Tensor& codes, at::Tensor& n_iter, at::Tensor& converged) {
  // A defined: V = (Y A^T) A instead of Y G (2 B d D flops instead of B d^2 when d > 2 D).
  const bool factored = A.defined();
  const at::Tensor At = factored ? A.t().contiguous() : at::Tensor();
  const int64_t D = factored ? A.size(0) : 0;
  const int64_t B = c.size(0);
  const int64_t d = c.size(1);
  if (B == 0) return;
  const scalar_t* c_ptr = c.const_data_ptr<scalar_t>();
  const scalar_t* lam_ptr = lam.const_data_ptr<scalar_t>();
  const scalar_t* z0_ptr = z0.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = codes.mutable_data_ptr<scalar_t>();
  int32_t* n_iter_ptr = n_iter.mutable_data_ptr<int32_t>();
  bool* conv_ptr = converged.mutable_data_ptr<bool>();

  const scalar_t step = static_cast<scalar_t>(1.0 / lipschitz);
  const scalar_t tol_s = static_cast<scalar_t>(tol);

  // Momentum coefficients (t_k - 1) / t_{k+1}, k = 1..max_iter, shared by all rows.
  std::vector<scalar_t> coef(static_cast<size_t>(max_iter));
  {
    double t = 1.0;
    for (int64_t k = 0; k < max_iter; ++k) {
      const double t_next = (1.0 + std::sqrt(1.0 + 4.0 * t * t)) / 2.0;
      coef[k] = static_cast<scalar_t>((t - 1.0) / t_next);
      t = t_next;
    }
  }

  // Block size: big enough to amortize the GEMM call, small enough for
  // several blocks per thread (load balance when rows stop at different k).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t target = std::clamp<int64_t>(16384 / std::max<int64_t>(d, 1), 32, 256);
  const int64_t rows_per_block =
      std::clamp<int64_t>(ceil_div(B, 4 * threads), std::min<int64_t>(8, B), target);
  const int64_t n_blocks = ceil_div(B, rows_per_block);
  std::atomic<int64_t> next_block{0};
  const auto options = c.options();

  auto worker = [&]() {
    // Thread-local buffers, reused for every block this thread takes.
    at::Tensor Y = at::empty({rows_per_block, d}, options);
    at::Tensor V = at::empty({rows_per_block, d}, options);
    at::Tensor T = factored ? at::empty({rows_per_block, D}, options) : at::Tensor();
    std::vector<scalar_t> Zp(static_cast<size_t>(rows_per_block * d));
    std::vector<scalar_t> C(static_cast<size_t>(rows_per_block * d));
    std::vector<scalar_t> thr(static_cast<size_t>(rows_per_block));
    std::vector<int64_t> row_id(static_cast<size_t>(rows_per_block));
    std::vector<char> stop(static_cast<size_t>(rows_per_block));
    scalar_t* y = Y.mutable_data_ptr<scalar_t>();
    const scalar_t* v = V.const_data_ptr<scalar_t>();
    scalar_t* zp = Zp.data();
    scalar_t* cb = C.data();
    const size_t row_bytes = static_cast<size_t>(d) * sizeof(scalar_t);

    for (int64_t blk = next_block.fetch_add(1); blk < n_blocks; blk = next_block.fetch_add(1)) {
      const int64_t r0 = blk * rows_per_block;
      int64_t na = std::min(rows_per_block, B - r0);  // active rows, compacted at the top
      if (d > 0) {
        std::memcpy(y, z0_ptr + r0 * d, na * row_bytes);
        std::memcpy(zp, z0_ptr + r0 * d, na * row_bytes);
        std::memcpy(cb, c_ptr + r0 * d, na * row_bytes);
      }
      for (int64_t i = 0; i < na; ++i) {
        thr[i] = lam_ptr[r0 + i] * step;
        row_id[i] = r0 + i;
      }
      if (max_iter == 0) {  // nothing to run: z0, n_iter 0, not converged
        if (d > 0) std::memcpy(out_ptr + r0 * d, z0_ptr + r0 * d, na * row_bytes);
        for (int64_t i = 0; i < na; ++i) {
          n_iter_ptr[r0 + i] = 0;
          conv_ptr[r0 + i] = false;
        }
        continue;
      }
      for (int64_t k = 1; k <= max_iter && na > 0; ++k) {
        if (d > 0) {
          at::Tensor Vn = V.narrow(0, 0, na);
          if (factored) {
            at::Tensor Tn = T.narrow(0, 0, na);
            at::mm_out(Tn, Y.narrow(0, 0, na), At);  // (y A^T): (na, D)
            at::mm_out(Vn, Tn, A);                   // (y A^T) A = y G
          } else {
            at::mm_out(Vn, Y.narrow(0, 0, na), gram);  // gram symmetric: (G y)^T = y^T G
          }
        }
        const scalar_t cf = coef[k - 1];
        int64_t n_stop = 0;
        for (int64_t i = 0; i < na; ++i) {
          scalar_t* yr = y + i * d;
          scalar_t* zr = zp + i * d;
          const scalar_t* vr = v + i * d;
          const scalar_t* cr = cb + i * d;
          const scalar_t th = thr[i];
          // 8 partial sums per norm so the loop vectorizes without reassociation flags.
          constexpr int kLanes = 8;
          double ch[kLanes] = {0}, zn[kLanes] = {0};
          int64_t j = 0;
          auto body = [&](int64_t jj, int lane) {
            const scalar_t u = yr[jj] - (vr[jj] - cr[jj]) * step;
            scalar_t z;
            if (nonneg) {
              z = std::max(u - th, scalar_t(0));
            } else {
              const scalar_t a = std::max(std::abs(u) - th, scalar_t(0));
              // sign(u) a; a NaN u stays NaN (the reference's sign(NaN) * NaN)
              z = u > 0 ? a : (u < 0 ? -a : (u == u ? scalar_t(0) : u));
            }
            const scalar_t diff = z - zr[jj];
            ch[lane] += static_cast<double>(diff) * static_cast<double>(diff);
            zn[lane] += static_cast<double>(z) * static_cast<double>(z);
            yr[jj] = z + cf * diff;
            zr[jj] = z;
          };
          for (; j + kLanes <= d; j += kLanes) {
            for (int l = 0; l < kLanes; ++l) body(j + l, l);
          }
          for (; j < d; ++j) body(j, 0);
          double chs = 0, zns = 0;
          for (int l = 0; l < kLanes; ++l) {
            chs += ch[l];
            zns += zn[l];
          }
          const scalar_t change = static_cast<scalar_t>(std::sqrt(chs));
          const scalar_t znorm = static_cast<scalar_t>(std::sqrt(zns));
          // NaN or inf codes never count as converged
          const bool s = change <= tol_s * znorm && std::isfinite(znorm);
          stop[i] = s;
          if (s || k == max_iter) {
            const int64_t r = row_id[i];
            if (d > 0) std::memcpy(out_ptr + r * d, zr, row_bytes);
            n_iter_ptr[r] = static_cast<int32_t>(k);
            conv_ptr[r] = s;
            n_stop += s;
          }
        }
        if (n_stop > 0 && k < max_iter) {
          // Compact: keep the running rows at the top, in order.
          int64_t w = 0;
          for (int64_t i = 0; i < na; ++i) {
            if (stop[i]) continue;
            if (w != i) {
              if (d > 0) {
                std::memcpy(y + w * d, y + i * d, row_bytes);
                std::memcpy(zp + w * d, zp + i * d, row_bytes);
                std::memcpy(cb + w * d, cb + i * d, row_bytes);
              }
              thr[w] = thr[i];
              row_id[w] = row_id[i];
            }
            ++w;
          }
          na = w;
        }
      }
    }
  };

  const int64_t n_tasks = std::min(threads, n_blocks);
  if (n_tasks <= 1) {
    worker();
  } else {
    at::parallel_for(0, n_tasks, 1, [&](int64_t begin, int64_t end) {
      (void)begin;
      (void)end;
      worker();  // each task pulls blocks until none is left
    });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> fista_solve(
    const at::Tensor& gram_in, const at::Tensor& c_in, const at::Tensor& lam_in,
    const at::Tensor& z0_in, double lipschitz, int64_t max_iter, double tol, bool nonneg,
    const std::optional<at::Tensor>& A_opt) {
  TORCH_CHECK(c_in.dim() == 2, "fista_solve: c must be (B, d), got ", c_in.sizes());
  const int64_t B = c_in.size(0);
  const int64_t d = c_in.size(1);
  const bool factored = A_opt.has_value() && A_opt->defined();
  if (factored) {
    TORCH_CHECK(A_opt->dim() == 2 && A_opt->size(1) == d && A_opt->scalar_type() == c_in.scalar_type(),
                "fista_solve: A must be (D, d) with d = ", d, " in c's dtype, got ", A_opt->sizes());
  } else {
    TORCH_CHECK(gram_in.dim() == 2 && gram_in.size(0) == d && gram_in.size(1) == d,
                "fista_solve: gram must be (d, d) with d = ", d, ", got ", gram_in.sizes());
  }
  TORCH_CHECK(lam_in.dim() == 1 && lam_in.size(0) == B, "fista_solve: lam must be (B,) with B = ",
              B, ", got ", lam_in.sizes());
  TORCH_CHECK(z0_in.sizes() == c_in.sizes(), "fista_solve: z0 must have c's shape ",
              c_in.sizes(), ", got ", z0_in.sizes());
  const auto dtype = c_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "fista_solve: compute dtype must be float32 or float64, got ", dtype);
  TORCH_CHECK((factored || gram_in.scalar_type() == dtype) && lam_in.scalar_type() == dtype &&
                  z0_in.scalar_type() == dtype,
              "fista_solve: gram, c, lam and z0 must share one dtype");
  TORCH_CHECK(c_in.device().is_cpu() && gram_in.device().is_cpu() && lam_in.device().is_cpu() &&
                  z0_in.device().is_cpu(),
              "fista_solve: CPU tensors expected");
  TORCH_CHECK(max_iter >= 0, "fista_solve: max_iter must be >= 0, got ", max_iter);
  TORCH_CHECK(std::isfinite(lipschitz) && lipschitz > 0,
              "fista_solve: lipschitz must be positive, got ", lipschitz);

  const at::Tensor gram = factored ? at::Tensor() : gram_in.contiguous();
  const at::Tensor A = factored ? A_opt->contiguous() : at::Tensor();
  const at::Tensor c = c_in.contiguous();
  const at::Tensor lam = lam_in.contiguous();
  const at::Tensor z0 = z0_in.contiguous();
  at::Tensor codes = at::empty({B, d}, c.options());
  at::Tensor n_iter = at::empty({B}, c.options().dtype(at::kInt));
  at::Tensor converged = at::empty({B}, c.options().dtype(at::kBool));

  AT_DISPATCH_FLOATING_TYPES(dtype, "fista_solve", [&] {
    solve<scalar_t>(gram, A, c, lam, z0, lipschitz, max_iter, tol, nonneg, codes, n_iter,
                    converged);
  });
  return {codes, n_iter, converged};
}

}  // namespace vsc
