// CSR x dense-row-major product on the CPU (sparse_decode's forward and the
// gradient of the dictionary), with the semantics of reference.csr_spmm.
//
// at::parallel_for over output rows; a row is accumulated in place (float32 /
// float64 outputs) or in a thread-local float32 buffer (float16 / bfloat16 outputs).
// The inner loop adds four gathered rows of `dense` at a time,
//   acc[j] = acc[j] + v0 s0[j] + v1 s1[j] + v2 s2[j] + v3 s3[j]
// which is evaluated left to right: the same rounding as adding the non-zeros one by
// one, with a quarter of the loads and stores of acc. It vectorizes over j (GCC on
// x86-64: AVX-512F / AVX2 clones picked at load time); -ffp-contract=off keeps the
// products and sums separately rounded.
//
// float16 / bfloat16 inputs: `val` and `dense` are converted to float32 first (one
// pass over dense, which is A^T (d, D) in the forward and grad_out (N, D) in the
// gradient of A, against nnz * D multiply-adds), so the hot loop is the float one.

#include "sparse_decode.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

namespace vsc {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VSC_SPMM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VSC_SPMM_CLONES
#endif

// acc[0:n] += sum over the row's non-zeros k in [k0, k1) of val[k] * dense[col[k], 0:n].
template <typename T>
inline void accumulate_row(T* __restrict acc, int64_t n, const T* __restrict dense,
                           const int64_t* __restrict col, const T* __restrict val, int64_t k0,
                           int64_t k1) {
  int64_t k = k0;
  for (; k + 4 <= k1; k += 4) {
    const T* __restrict s0 = dense + col[k] * n;
    const T* __restrict s1 = dense + col[k + 1] * n;
    const T* __restrict s2 = dense + col[k + 2] * n;
    const T* __restrict s3 = dense + col[k + 3] * n;
    const T v0 = val[k], v1 = val[k + 1], v2 = val[k + 2], v3 = val[k + 3];
    for (int64_t j = 0; j < n; ++j) {
      acc[j] = acc[j] + v0 * s0[j] + v1 * s1[j] + v2 * s2[j] + v3 * s3[j];
    }
  }
  for (; k < k1; ++k) {
    const T* __restrict s = dense + col[k] * n;
    const T v = val[k];
    for (int64_t j = 0; j < n; ++j) acc[j] = acc[j] + v * s[j];
  }
}

VSC_SPMM_CLONES void accumulate_row_f32(float* acc, int64_t n, const float* dense,
                                        const int64_t* col, const float* val, int64_t k0,
                                        int64_t k1) {
  accumulate_row<float>(acc, n, dense, col, val, k0, k1);
}

VSC_SPMM_CLONES void accumulate_row_f64(double* acc, int64_t n, const double* dense,
                                        const int64_t* col, const double* val, int64_t k0,
                                        int64_t k1) {
  accumulate_row<double>(acc, n, dense, col, val, k0, k1);
}

inline void accumulate(float* acc, int64_t n, const float* dense, const int64_t* col,
                       const float* val, int64_t k0, int64_t k1) {
  accumulate_row_f32(acc, n, dense, col, val, k0, k1);
}

inline void accumulate(double* acc, int64_t n, const double* dense, const int64_t* col,
                       const double* val, int64_t k0, int64_t k1) {
  accumulate_row_f64(acc, n, dense, col, val, k0, k1);
}

// out (R, n) of type out_t, math in T (float or double).
template <typename T, typename out_t>
void spmm(const int64_t* crow, const int64_t* col, const T* val, const T* dense, int64_t R,
          int64_t n, int64_t nnz, out_t* out) {
  // Rows per task: about 64k multiply-adds, at least one row.
  const int64_t work_per_row = std::max<int64_t>(1, (nnz / std::max<int64_t>(R, 1) + 1) * n);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / work_per_row);
  at::parallel_for(0, R, grain, [&](int64_t r_begin, int64_t r_end) {
    constexpr bool in_place = std::is_same_v<T, out_t>;
    std::vector<T> buffer(in_place ? 0 : static_cast<size_t>(n));
    for (int64_t r = r_begin; r < r_end; ++r) {
      T* acc = in_place ? reinterpret_cast<T*>(out + r * n) : buffer.data();
      std::fill(acc, acc + n, T(0));
      accumulate(acc, n, dense, col, val, crow[r], crow[r + 1]);
      if constexpr (!in_place) {
        out_t* row = out + r * n;
        for (int64_t j = 0; j < n; ++j) row[j] = static_cast<out_t>(acc[j]);
      }
    }
  });
}

}  // namespace

at::Tensor csr_spmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                    const at::Tensor& dense) {
  TORCH_CHECK(crow.dim() == 1 && crow.size(0) >= 1 && crow.scalar_type() == at::kLong,
              "csr_spmm: crow must be a non-empty 1-D int64 tensor");
  TORCH_CHECK(col.dim() == 1 && col.scalar_type() == at::kLong,
              "csr_spmm: col must be a 1-D int64 tensor");
  TORCH_CHECK(val.dim() == 1 && val.size(0) == col.size(0),
              "csr_spmm: val must be 1-D with col's length");
  TORCH_CHECK(dense.dim() == 2, "csr_spmm: dense must be 2-D");
  TORCH_CHECK(val.scalar_type() == dense.scalar_type(),
              "csr_spmm: val and dense must have one dtype");
  TORCH_CHECK(crow.device().is_cpu() && col.device().is_cpu() && val.device().is_cpu() &&
                  dense.device().is_cpu(),
              "csr_spmm: CPU tensors expected");
  const int64_t R = crow.size(0) - 1;
  const int64_t n = dense.size(1);
  const int64_t nnz = col.size(0);
  const auto out_type = dense.scalar_type();
  at::Tensor out = at::empty({R, n}, dense.options());
  if (R == 0 || n == 0) return out;
  if (nnz == 0) return out.zero_();

  const at::Tensor crow_c = crow.contiguous();
  const at::Tensor col_c = col.contiguous();
  const int64_t* crow_p = crow_c.const_data_ptr<int64_t>();
  const int64_t* col_p = col_c.const_data_ptr<int64_t>();
  if (out_type == at::kDouble) {
    const at::Tensor v = val.contiguous(), m = dense.contiguous();
    spmm<double, double>(crow_p, col_p, v.const_data_ptr<double>(), m.const_data_ptr<double>(),
                         R, n, nnz, out.mutable_data_ptr<double>());
    return out;
  }
  const at::Tensor v = val.to(at::kFloat).contiguous();
  const at::Tensor m = dense.to(at::kFloat).contiguous();
  const float* v_p = v.const_data_ptr<float>();
  const float* m_p = m.const_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_type, "csr_spmm", [&] {
    spmm<float, scalar_t>(crow_p, col_p, v_p, m_p, R, n, nnz, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace vsc
