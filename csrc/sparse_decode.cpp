// sparse_decode on the CPU, with the semantics of reference.decode and
// reference.grad_weight_t: products with the codes z that skip z's exact zeros.
//
// No compression step: the kernels scan z directly (one pass over N * d values,
// cheap next to the nnz * D multiply-adds), so no CSR is built and nothing is
// read back. Each output row is owned by one thread: no atomics, and every sum
// runs in a fixed order (deterministic).
//
// forward   out = z @ At: at::parallel_for over rows n; the row's non-zeros are
//           collected (index, value), then their rows of At are added four at a time,
//             acc[j] = acc[j] + v0 s0[j] + v1 s1[j] + v2 s2[j] + v3 s3[j]
//           evaluated left to right: the rounding of adding them one by one, with a
//           quarter of the loads and stores of acc.
// gradient  out = z^T @ grad_out: at::parallel_for over blocks of columns k of z
//           (output rows); each block scans every row n of z over its columns and
//           adds z[n, k] * grad_out[n, :] to out[k, :] (grad_out[n] stays in L1
//           while the block's non-zeros of row n use it; the block's output rows,
//           about 128 KB, stay in L2).
//
// The inner loops vectorize over the D columns (GCC on x86-64: AVX-512F / AVX2
// clones picked at load time); -ffp-contract=off keeps products and sums
// separately rounded. float16 / bfloat16: At and grad_out are converted to float32
// first (one pass over d * D or N * D values) so that the hot loops are the float
// ones; z's values are converted as they are read.

#include "sparse_decode.h"

#include "cpu_kernels.h"
#include "nonzeros.h"
#include "prefault.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

namespace vsc {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VSC_SPMM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VSC_SPMM_CLONES
#endif

// acc[0:n] += sum_i val[i] * dense[col[i] * n : col[i] * n + n], i = 0 .. count-1 in order.
template <typename T>
inline void gather_rows(T* __restrict acc, int64_t n, const T* __restrict dense,
                        const int64_t* __restrict col, const T* __restrict val, int64_t count) {
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    const T* __restrict s0 = dense + col[i] * n;
    const T* __restrict s1 = dense + col[i + 1] * n;
    const T* __restrict s2 = dense + col[i + 2] * n;
    const T* __restrict s3 = dense + col[i + 3] * n;
    const T v0 = val[i], v1 = val[i + 1], v2 = val[i + 2], v3 = val[i + 3];
    for (int64_t j = 0; j < n; ++j) {
      acc[j] = acc[j] + v0 * s0[j] + v1 * s1[j] + v2 * s2[j] + v3 * s3[j];
    }
  }
  for (; i < count; ++i) {
    const T* __restrict s = dense + col[i] * n;
    const T v = val[i];
    for (int64_t j = 0; j < n; ++j) acc[j] = acc[j] + v * s[j];
  }
}

// acc[0:n] += v * src[0:n]
template <typename T>
inline void axpy(T* __restrict acc, int64_t n, T v, const T* __restrict src) {
  for (int64_t j = 0; j < n; ++j) acc[j] = acc[j] + v * src[j];
}

VSC_SPMM_CLONES void gather_rows_f32(float* acc, int64_t n, const float* dense,
                                     const int64_t* col, const float* val, int64_t count) {
  gather_rows<float>(acc, n, dense, col, val, count);
}
VSC_SPMM_CLONES void gather_rows_f64(double* acc, int64_t n, const double* dense,
                                     const int64_t* col, const double* val, int64_t count) {
  gather_rows<double>(acc, n, dense, col, val, count);
}
VSC_SPMM_CLONES void axpy_f32(float* acc, int64_t n, float v, const float* src) {
  axpy<float>(acc, n, v, src);
}
VSC_SPMM_CLONES void axpy_f64(double* acc, int64_t n, double v, const double* src) {
  axpy<double>(acc, n, v, src);
}
inline void gather(float* acc, int64_t n, const float* dense, const int64_t* col,
                   const float* val, int64_t count) {
  gather_rows_f32(acc, n, dense, col, val, count);
}
inline void gather(double* acc, int64_t n, const double* dense, const int64_t* col,
                   const double* val, int64_t count) {
  gather_rows_f64(acc, n, dense, col, val, count);
}
inline void add_scaled(float* acc, int64_t n, float v, const float* src) {
  axpy_f32(acc, n, v, src);
}
inline void add_scaled(double* acc, int64_t n, double v, const double* src) {
  axpy_f64(acc, n, v, src);
}

// z (N, d) of type z_t, At (d, D) of math type T; out (N, D) of type z_t.
template <typename z_t, typename T>
void forward(const z_t* z, const T* At, int64_t N, int64_t d, int64_t D, z_t* out) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(d + D, 1));
  const bool prefault = N * D * static_cast<int64_t>(sizeof(z_t)) >= kPrefaultMinBytes;
  at::parallel_for(0, N, grain, [&](int64_t n_begin, int64_t n_end) {
    WritePrefault pages(out + n_begin * D, out + n_end * D, prefault);
    constexpr bool in_place = std::is_same_v<T, z_t>;
    std::vector<T> buffer(in_place ? 0 : static_cast<size_t>(D));
    std::vector<int64_t> col(static_cast<size_t>(d + 1));
    std::vector<T> val(static_cast<size_t>(d + 1));
    for (int64_t n = n_begin; n < n_end; ++n) {
      const int64_t count = collect_nonzeros_scalar(z + n * d, d, 1, col.data(), val.data());
      pages.before(out + (n + 1) * D);
      T* acc;
      if constexpr (in_place) {
        acc = out + n * D;
      } else {
        acc = buffer.data();
      }
      std::fill(acc, acc + D, T(0));
      gather(acc, D, At, col.data(), val.data(), count);
      if constexpr (!in_place) {
        z_t* dst = out + n * D;
        for (int64_t j = 0; j < D; ++j) dst[j] = static_cast<z_t>(acc[j]);
      }
    }
  });
}

// z (N, d) of type z_t, grad_out (N, D) of math type T; out (d, D) of type z_t.
template <typename z_t, typename T>
void grad_weight_t(const z_t* z, const T* grad_out, int64_t N, int64_t d, int64_t D,
                   z_t* out) {
  if constexpr (std::is_same_v<z_t, float>) {
    // float32: the vectorized kernel (csrc/vec_kernels.h), same sums bit for bit
    cpu::kernels().sparse_grad_t_f32(z, grad_out, N, d, D, out, /*accumulate=*/false);
    return;
  }
  // Output rows per block: every block streams all of grad_out once, so blocks are
  // large: one per thread, at most 4 MB of accumulators (they live in L2/L3).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t by_cache =
      std::max<int64_t>(1, (int64_t{4} << 20) / (sizeof(T) * std::max<int64_t>(D, 1)));
  const int64_t by_threads = (d + threads - 1) / threads;
  const int64_t block = std::min(by_cache, by_threads);
  const int64_t n_blocks = (d + block - 1) / block;
  at::parallel_for(0, n_blocks, 1, [&](int64_t b_begin, int64_t b_end) {
    constexpr bool in_place = std::is_same_v<T, z_t>;
    std::vector<T> buffer(in_place ? 0 : static_cast<size_t>(block * D));
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t k0 = b * block;
      const int64_t k1 = std::min(d, k0 + block);
      T* acc;
      if constexpr (in_place) {
        acc = out + k0 * D;
      } else {
        acc = buffer.data();
      }
      std::fill(acc, acc + (k1 - k0) * D, T(0));
      for (int64_t n = 0; n < N; ++n) {
        const z_t* row = z + n * d;
        const T* src = grad_out + n * D;
        for (int64_t k = k0; k < k1; ++k) {
          const T v = static_cast<T>(row[k]);
          if (v != T(0)) add_scaled(acc + (k - k0) * D, D, v, src);
        }
      }
      if constexpr (!in_place) {
        z_t* dst = out + k0 * D;
        for (int64_t j = 0; j < (k1 - k0) * D; ++j) dst[j] = static_cast<z_t>(acc[j]);
      }
    }
  });
}

void check_pair(const char* what, const at::Tensor& z, const at::Tensor& other,
                const char* other_name) {
  TORCH_CHECK(z.dim() == 2 && other.dim() == 2, what, ": z and ", other_name, " must be 2-D");
  TORCH_CHECK(z.scalar_type() == other.scalar_type(), what, ": z and ", other_name,
              " must have one dtype");
  TORCH_CHECK(z.device().is_cpu() && other.device().is_cpu(), what, ": CPU tensors expected");
}

}  // namespace

at::Tensor sparse_decode_forward(const at::Tensor& z, const at::Tensor& At) {
  check_pair("sparse_decode_forward", z, At, "At");
  TORCH_CHECK(z.size(1) == At.size(0), "sparse_decode_forward: z (N, d) and At (d, D) expected");
  const int64_t N = z.size(0), d = z.size(1), D = At.size(1);
  at::Tensor out = at::empty({N, D}, z.options());
  if (N == 0 || D == 0) return out;
  const at::Tensor zc = z.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "sparse_decode", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor m = At.to(c10::CppTypeToScalarType<T>::value).contiguous();
    forward<scalar_t, T>(zc.const_data_ptr<scalar_t>(), m.const_data_ptr<T>(), N, d, D,
                         out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

void sparse_decode_grad_weight_t_add(at::Tensor& out, const at::Tensor& z,
                                     const at::Tensor& grad_out) {
  check_pair("sparse_decode_grad_weight_t_add", z, grad_out, "grad_out");
  TORCH_CHECK(z.size(0) == grad_out.size(0) && out.dim() == 2 && out.size(0) == z.size(1) &&
                  out.size(1) == grad_out.size(1),
              "sparse_decode_grad_weight_t_add: out (d, D), z (N, d), grad_out (N, D) expected");
  if (out.scalar_type() == at::kFloat && z.scalar_type() == at::kFloat && out.is_contiguous()) {
    const at::Tensor zc = z.contiguous(), g = grad_out.contiguous();
    cpu::kernels().sparse_grad_t_f32(zc.const_data_ptr<float>(), g.const_data_ptr<float>(),
                                     z.size(0), z.size(1), grad_out.size(1),
                                     out.mutable_data_ptr<float>(), /*accumulate=*/true);
    return;
  }
  out.add_(sparse_decode_grad_weight_t(z, grad_out));
}

at::Tensor sparse_decode_grad_weight_t(const at::Tensor& z, const at::Tensor& grad_out) {
  check_pair("sparse_decode_grad_weight_t", z, grad_out, "grad_out");
  TORCH_CHECK(z.size(0) == grad_out.size(0),
              "sparse_decode_grad_weight_t: z (N, d) and grad_out (N, D) expected");
  const int64_t N = z.size(0), d = z.size(1), D = grad_out.size(1);
  at::Tensor out = at::empty({d, D}, z.options());
  if (d == 0 || D == 0) return out;
  const at::Tensor zc = z.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "sparse_decode", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor g = grad_out.to(c10::CppTypeToScalarType<T>::value).contiguous();
    grad_weight_t<scalar_t, T>(zc.const_data_ptr<scalar_t>(), g.const_data_ptr<T>(), N, d, D,
                               out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace vsc
