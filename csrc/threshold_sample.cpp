// threshold_sample on the CPU: forward (z and the KL) and the hand-written
// backward, with the semantics of the backend contract in
// vsc_kernels/threshold_sample/reference.py (threshold_sample_forward,
// threshold_sample_backward, kl_divergence, kl_divergence_grads).
//
// Work is split into tasks (m, column chunk); a task loops over the J samples
// of row m, so the per-column terms (mu, the noise scale, the gradient
// accumulators) stay in small stack buffers. Per sample row the task draws
// the raw Philox outputs of its chunk in one block (4 columns per call),
// turns them into noise, and runs a branch-free elementwise loop.
//
// Math is float32 for float16/bfloat16/float32 inputs and float64 for float64,
// in the same order of operations as the reference.

#include "threshold_sample.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "philox.h"

namespace vsc {
namespace {

enum class Base { kLaplace, kGaussian };
enum class Estimator { kStraight, kSubgradient, kStraightShift };

// Columns per task at most; a multiple of 4 so that chunks start on a Philox group.
constexpr int64_t kMaxChunk = 256;
// Smallest chunk used when columns are split to feed more threads.
constexpr int64_t kMinChunk = 32;
// Elements (J * columns) a thread should at least get before going parallel.
constexpr int64_t kMinWorkPerThread = 16384;

Base parse_base(const std::string& base) {
  if (base == "laplace") return Base::kLaplace;
  if (base == "gaussian") return Base::kGaussian;
  TORCH_CHECK(false, "threshold_sample: base must be 'laplace' or 'gaussian', got '", base, "'");
}

Estimator parse_estimator(const std::string& estimator) {
  if (estimator == "straight") return Estimator::kStraight;
  if (estimator == "subgradient") return Estimator::kSubgradient;
  if (estimator == "straight_shift") return Estimator::kStraightShift;
  TORCH_CHECK(false,
              "threshold_sample: estimator must be 'straight', 'subgradient' or "
              "'straight_shift', got '",
              estimator, "'");
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The noise of a block (Philox outputs, then the float32 transforms, which use
// no libm call) vectorizes across calls; on x86-64 with GCC it is also compiled
// for AVX-512F and AVX2 and the best clone is picked at load time. Every path
// gives the same bits: integer work, and IEEE float ops without contraction.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VSC_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VSC_SIMD_CLONES
#endif

VSC_SIMD_CLONES void philox_block_mv(uint64_t q0, int64_t ngroups, const philox::Stream& st,
                                     uint32_t* out) {
  philox::philox_block(q0, ngroups, st, out);
}

VSC_SIMD_CLONES void laplace_block_f32(const uint32_t* bits, int64_t n4, float* eps) {
  philox::laplace_block<float>(bits, n4, eps);
}

VSC_SIMD_CLONES void gaussian_block_f32(const uint32_t* bits, int64_t n4, float* eps) {
  philox::gaussian_block<float>(bits, n4, eps);
}

// torch.sign: -1, 0 or 1 (0 for 0 and NaN).
template <typename T>
inline T sign_of(T x) {
  return (x > T(0) ? T(1) : T(0)) - (x < T(0) ? T(1) : T(0));
}

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// ---------------------------------------------------------------------------
// Strided row reads, converted to the compute type T.

template <typename S, typename T>
void gather_row(const void* src, int64_t stride, int64_t n, T* __restrict out) {
  const S* p = static_cast<const S*>(src);
  if (stride == 1) {
    for (int64_t k = 0; k < n; ++k) out[k] = static_cast<T>(p[k]);
  } else if (stride == 0) {
    const T v = static_cast<T>(p[0]);
    for (int64_t k = 0; k < n; ++k) out[k] = v;
  } else {
    for (int64_t k = 0; k < n; ++k) out[k] = static_cast<T>(p[k * stride]);
  }
}

template <typename T>
using GatherFn = void (*)(const void*, int64_t, int64_t, T*);

template <typename T>
GatherFn<T> gather_fn_for(at::ScalarType type) {
  GatherFn<T> fn = nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "threshold_sample_gather",
                                  [&] { fn = &gather_row<scalar_t, T>; });
  return fn;
}

// ---------------------------------------------------------------------------
// lam: either the scalar lam_value or an (M, J, d) view read through its
// strides. A view of another dtype is converted without materializing its
// broadcast: the 0-stride dims are narrowed to size 1, the small tensor is
// converted, and expanded back.

template <typename T>
struct LamView {
  bool is_tensor = false;
  T value = T(0);
  const T* data = nullptr;
  int64_t s_m = 0, s_j = 0, s_d = 0;
  at::Tensor keep_alive;
};

template <typename T>
LamView<T> make_lam_view(const std::optional<at::Tensor>& lam_opt, double lam_value, int64_t M,
                         int64_t J, int64_t d, at::ScalarType compute) {
  LamView<T> view;
  view.value = static_cast<T>(lam_value);
  if (!lam_opt.has_value() || !lam_opt->defined()) return view;
  at::Tensor lam = *lam_opt;
  TORCH_CHECK(lam.device().is_cpu(), "threshold_sample: lam must be a CPU tensor");
  TORCH_CHECK(is_supported_float(lam.scalar_type()),
              "threshold_sample: lam must be float16, bfloat16, float32 or float64, got ",
              lam.scalar_type());
  TORCH_CHECK(lam.dim() == 3 && lam.size(0) == M && lam.size(1) == J && lam.size(2) == d,
              "threshold_sample: lam must have shape (M, J, d) = (", M, ", ", J, ", ", d,
              "), got ", lam.sizes());
  if (lam.scalar_type() != compute) {
    at::Tensor compact = lam;
    for (int64_t dim = 0; dim < 3; ++dim) {
      if (compact.stride(dim) == 0 && compact.size(dim) > 1) compact = compact.narrow(dim, 0, 1);
    }
    lam = compact.to(compute).expand({M, J, d});
  }
  view.is_tensor = true;
  view.keep_alive = lam;
  view.data = lam.numel() > 0 ? lam.data_ptr<T>() : nullptr;
  view.s_m = lam.stride(0);
  view.s_j = lam.stride(1);
  view.s_d = lam.stride(2);
  return view;
}

// ---------------------------------------------------------------------------
// Task layout: (m, chunk of columns) pairs.

struct Plan {
  int64_t chunk = kMaxChunk;
  int64_t nchunks = 0;
  int64_t ntasks = 0;
  int64_t grain = 1;
};

Plan make_plan(int64_t M, int64_t J, int64_t d) {
  Plan plan;
  if (M <= 0 || d <= 0) return plan;
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  // With few rows, cut the columns finer so that every thread gets tasks.
  const int64_t want_per_row = ceil_div(4 * nthreads, M);
  int64_t chunk = kMaxChunk;
  if (want_per_row > 1) {
    chunk = ceil_div(ceil_div(d, want_per_row), 4) * 4;
    chunk = std::min(kMaxChunk, std::max(kMinChunk, chunk));
  }
  plan.chunk = chunk;
  plan.nchunks = ceil_div(d, chunk);
  plan.ntasks = M * plan.nchunks;
  const int64_t work_per_task = std::max<int64_t>(1, std::max<int64_t>(J, 1) * std::min(chunk, d));
  plan.grain = std::max<int64_t>(1, kMinWorkPerThread / work_per_task);
  return plan;
}

// ---------------------------------------------------------------------------
// Per-element pieces, in the reference's order of operations.

template <typename T>
inline T noise_scale(T logb, Base base) {
  return base == Base::kLaplace ? std::exp(logb) : std::exp(static_cast<T>(0.5) * logb);
}

// Standard noise of `ngroups` Philox calls from counter q0: eps[0, 4 ngroups).
inline void draw_noise(Base base, uint64_t q0, int64_t ngroups, const philox::Stream& st,
                       uint32_t* bits, float* eps) {
  philox_block_mv(q0, ngroups, st, bits);
  if (base == Base::kLaplace) {
    laplace_block_f32(bits, ngroups * philox::kLanes, eps);
  } else {
    gaussian_block_f32(bits, ngroups * philox::kLanes, eps);
  }
}

inline void draw_noise(Base base, uint64_t q0, int64_t ngroups, const philox::Stream& st,
                       uint32_t* bits, double* eps) {
  philox_block_mv(q0, ngroups, st, bits);
  if (base == Base::kLaplace) {
    philox::laplace_block<double>(bits, ngroups * philox::kLanes, eps);
  } else {
    philox::gaussian_block<double>(bits, ngroups * philox::kLanes, eps);
  }
}

// Per-element KL (kl_divergence); b0 = prior_scale, log_b0 = log(T(b0)).
template <typename T>
inline T kl_element(T mu, T logb, Base base, T b0, T two_b0, T log_b0) {
  if (base == Base::kLaplace) {
    const T a = std::abs(mu);
    const T b = std::exp(logb);
    return ((a / b0 + (b * std::exp(-a / b)) / b0) + (log_b0 - logb)) - T(1);
  }
  const T variance = std::exp(logb);
  return ((mu * mu + variance) / two_b0 + static_cast<T>(0.5) * (log_b0 - logb)) -
         static_cast<T>(0.5);
}

// kl_divergence_grads.
template <typename T>
inline void kl_element_grads(T mu, T logb, Base base, T b0, T two_b0, T* d_mu, T* d_logb) {
  if (base == Base::kLaplace) {
    const T a = std::abs(mu);
    const T b = std::exp(logb);
    const T decay = std::exp(-a / b);
    *d_mu = (sign_of(mu) * (T(1) - decay)) / b0;
    *d_logb = (decay * (b + a)) / b0 - T(1);
  } else {
    *d_mu = mu / b0;
    *d_logb = std::exp(logb) / two_b0 - static_cast<T>(0.5);
  }
}

// Forward elementwise: z = |delta| > lam ? s - sign(delta) lam : 0.
template <typename scalar_t, typename T>
inline void forward_row(int64_t n, const T* __restrict mu_w, const T* __restrict ws,
                        const T* __restrict eps, const T* __restrict lam,
                        scalar_t* __restrict out) {
  for (int64_t k = 0; k < n; ++k) {
    const T delta = ws[k] * eps[k];
    const T s = mu_w[k] + delta;
    const T l = lam[k];
    const T shifted = s - sign_of(delta) * l;
    // Branch-free select (the active pattern is random): compiles to a blend.
    const T z = std::abs(delta) > l ? shifted : T(0);
    out[k] = static_cast<scalar_t>(z);
  }
}

// Backward elementwise for one sample row; accumulates over the J samples.
template <typename T, Estimator E, bool kGaussian, bool kGradLam>
inline void backward_row(int64_t n, const T* __restrict ws, const T* __restrict eps,
                         const T* __restrict lam, const T* __restrict g_row,
                         T* __restrict acc_mu, T* __restrict acc_logb,
                         T* __restrict grad_lam) {
  for (int64_t k = 0; k < n; ++k) {
    const T delta = ws[k] * eps[k];
    const T a = std::abs(delta) > lam[k] ? T(1) : T(0);
    const T g = g_row[k];
    const T ds_dlogb = kGaussian ? static_cast<T>(0.5) * delta : delta;
    if (E == Estimator::kStraight) {
      acc_mu[k] += g;
      acc_logb[k] += g * ds_dlogb;
    } else if (E == Estimator::kSubgradient) {
      const T ga = g * a;
      acc_mu[k] += ga;
      acc_logb[k] += ga * ds_dlogb;
    } else {
      acc_mu[k] += g * (T(1) + a);
      acc_logb[k] += g * ds_dlogb;
    }
    if (kGradLam) grad_lam[k] = (-g * sign_of(delta)) * a;
  }
}

template <typename T, Estimator E, bool kGaussian>
inline void backward_row_lam(bool grad_lam_wanted, int64_t n, const T* ws, const T* eps,
                             const T* lam, const T* g_row, T* acc_mu, T* acc_logb,
                             T* grad_lam) {
  if (grad_lam_wanted) {
    backward_row<T, E, kGaussian, true>(n, ws, eps, lam, g_row, acc_mu, acc_logb, grad_lam);
  } else {
    backward_row<T, E, kGaussian, false>(n, ws, eps, lam, g_row, acc_mu, acc_logb, grad_lam);
  }
}

template <typename T>
void backward_row_dispatch(Estimator est, Base base, bool grad_lam_wanted, int64_t n,
                           const T* ws, const T* eps, const T* lam, const T* g_row, T* acc_mu,
                           T* acc_logb, T* grad_lam) {
  const bool gaussian = base == Base::kGaussian;
#define VSC_ROW(E)                                                                             \
  if (gaussian) {                                                                              \
    backward_row_lam<T, E, true>(grad_lam_wanted, n, ws, eps, lam, g_row, acc_mu, acc_logb,    \
                                 grad_lam);                                                    \
  } else {                                                                                     \
    backward_row_lam<T, E, false>(grad_lam_wanted, n, ws, eps, lam, g_row, acc_mu, acc_logb,   \
                                  grad_lam);                                                   \
  }
  switch (est) {
    case Estimator::kStraight:
      VSC_ROW(Estimator::kStraight);
      break;
    case Estimator::kSubgradient:
      VSC_ROW(Estimator::kSubgradient);
      break;
    case Estimator::kStraightShift:
      VSC_ROW(Estimator::kStraightShift);
      break;
  }
#undef VSC_ROW
}

// Loads mu (as T) and the noise multiplier warmup * scale for columns [i0, i0 + n) of row m.
template <typename scalar_t, typename T>
inline void load_row_terms(const scalar_t* mu_p, int64_t mu_s0, int64_t mu_s1,
                           const scalar_t* logb_p, int64_t lb_s0, int64_t lb_s1, int64_t m,
                           int64_t i0, int64_t n, Base base, T warmup, T* __restrict mu_w,
                           T* __restrict ws) {
  const scalar_t* mu_row = mu_p + m * mu_s0 + i0 * mu_s1;
  const scalar_t* lb_row = logb_p + m * lb_s0 + i0 * lb_s1;
  for (int64_t k = 0; k < n; ++k) {
    mu_w[k] = static_cast<T>(mu_row[k * mu_s1]);
    ws[k] = warmup * noise_scale(static_cast<T>(lb_row[k * lb_s1]), base);
  }
}

// ---------------------------------------------------------------------------
// Kernels.

template <typename scalar_t>
void forward_kernel(const at::Tensor& mu, const at::Tensor& logb,
                    const LamView<at::opmath_type<scalar_t>>& lam, const philox::Stream& st,
                    int64_t J, Base base, double warmup, at::Tensor& z) {
  using T = at::opmath_type<scalar_t>;
  const int64_t M = mu.size(0), d = mu.size(1);
  const Plan plan = make_plan(M, J, d);
  if (plan.ntasks == 0 || J == 0) return;
  const scalar_t* mu_p = mu.data_ptr<scalar_t>();
  const scalar_t* logb_p = logb.data_ptr<scalar_t>();
  const int64_t mu_s0 = mu.stride(0), mu_s1 = mu.stride(1);
  const int64_t lb_s0 = logb.stride(0), lb_s1 = logb.stride(1);
  scalar_t* z_p = z.data_ptr<scalar_t>();
  const uint64_t groups = static_cast<uint64_t>(philox::groups_per_row(d));
  const T warmup_t = static_cast<T>(warmup);

  at::parallel_for(0, plan.ntasks, plan.grain, [&](int64_t t_begin, int64_t t_end) {
    alignas(64) uint32_t bits[kMaxChunk];
    alignas(64) T eps[kMaxChunk];
    alignas(64) T mu_w[kMaxChunk];
    alignas(64) T ws[kMaxChunk];
    alignas(64) T lam_buf[kMaxChunk];
    if (!lam.is_tensor) std::fill(lam_buf, lam_buf + kMaxChunk, lam.value);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t m = t / plan.nchunks;
      const int64_t i0 = (t % plan.nchunks) * plan.chunk;
      const int64_t n = std::min(plan.chunk, d - i0);
      const int64_t ngroups = ceil_div(n, philox::kLanes);
      load_row_terms<scalar_t, T>(mu_p, mu_s0, mu_s1, logb_p, lb_s0, lb_s1, m, i0, n, base,
                                  warmup_t, mu_w, ws);
      for (int64_t j = 0; j < J; ++j) {
        const int64_t r = m * J + j;
        draw_noise(base, static_cast<uint64_t>(r) * groups + static_cast<uint64_t>(i0 / 4),
                   ngroups, st, bits, eps);
        if (lam.is_tensor) {
          gather_row<T, T>(lam.data + m * lam.s_m + j * lam.s_j + i0 * lam.s_d, lam.s_d, n,
                           lam_buf);
        }
        forward_row<scalar_t, T>(n, mu_w, ws, eps, lam_buf, z_p + r * d + i0);
      }
    }
  });
}

template <typename scalar_t>
void kl_kernel(const at::Tensor& mu, const at::Tensor& logb, Base base, double prior_scale,
               at::Tensor& kl) {
  using T = at::opmath_type<scalar_t>;
  const int64_t M = mu.size(0), d = mu.size(1);
  T* kl_p = kl.data_ptr<T>();
  if (M == 0) return;
  const scalar_t* mu_p = mu.data_ptr<scalar_t>();
  const scalar_t* logb_p = logb.data_ptr<scalar_t>();
  const int64_t mu_s0 = mu.stride(0), mu_s1 = mu.stride(1);
  const int64_t lb_s0 = logb.stride(0), lb_s1 = logb.stride(1);
  const T b0 = static_cast<T>(prior_scale);
  const T two_b0 = static_cast<T>(2.0 * prior_scale);
  const T log_b0 = std::log(b0);
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(d, 1));
  at::parallel_for(0, M, grain, [&](int64_t m_begin, int64_t m_end) {
    for (int64_t m = m_begin; m < m_end; ++m) {
      double acc = 0.0;  // the sum over d is accumulated in float64
      for (int64_t i = 0; i < d; ++i) {
        const T mu_v = static_cast<T>(mu_p[m * mu_s0 + i * mu_s1]);
        const T lb_v = static_cast<T>(logb_p[m * lb_s0 + i * lb_s1]);
        acc += static_cast<double>(kl_element<T>(mu_v, lb_v, base, b0, two_b0, log_b0));
      }
      kl_p[m] = static_cast<T>(acc);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_z, const at::Tensor* grad_kl, const at::Tensor& mu,
                     const at::Tensor& logb, const LamView<at::opmath_type<scalar_t>>& lam,
                     const philox::Stream& st, int64_t J, Base base, Estimator est,
                     double warmup, double prior_scale, at::Tensor& grad_mu,
                     at::Tensor& grad_logb, at::Tensor* grad_lam) {
  using T = at::opmath_type<scalar_t>;
  const int64_t M = mu.size(0), d = mu.size(1);
  const Plan plan = make_plan(M, J, d);
  if (plan.ntasks == 0) return;
  const scalar_t* mu_p = mu.data_ptr<scalar_t>();
  const scalar_t* logb_p = logb.data_ptr<scalar_t>();
  const int64_t mu_s0 = mu.stride(0), mu_s1 = mu.stride(1);
  const int64_t lb_s0 = logb.stride(0), lb_s1 = logb.stride(1);
  scalar_t* gmu_p = grad_mu.data_ptr<scalar_t>();
  scalar_t* glb_p = grad_logb.data_ptr<scalar_t>();
  T* glam_p = grad_lam != nullptr && grad_lam->numel() > 0 ? grad_lam->data_ptr<T>() : nullptr;
  const bool want_glam = grad_lam != nullptr;
  const T* gkl_p = grad_kl != nullptr ? grad_kl->data_ptr<T>() : nullptr;

  const GatherFn<T> gather_g = gather_fn_for<T>(grad_z.scalar_type());
  const char* gz_p = static_cast<const char*>(grad_z.data_ptr());
  const int64_t gz_item = static_cast<int64_t>(grad_z.element_size());
  const int64_t gz_s0 = grad_z.stride(0), gz_s1 = grad_z.stride(1), gz_s2 = grad_z.stride(2);

  const uint64_t groups = static_cast<uint64_t>(philox::groups_per_row(d));
  const T warmup_t = static_cast<T>(warmup);
  const T b0 = static_cast<T>(prior_scale);
  const T two_b0 = static_cast<T>(2.0 * prior_scale);

  at::parallel_for(0, plan.ntasks, plan.grain, [&](int64_t t_begin, int64_t t_end) {
    alignas(64) uint32_t bits[kMaxChunk];
    alignas(64) T eps[kMaxChunk];
    alignas(64) T mu_w[kMaxChunk];
    alignas(64) T ws[kMaxChunk];
    alignas(64) T lam_buf[kMaxChunk];
    alignas(64) T g_buf[kMaxChunk];
    alignas(64) T acc_mu[kMaxChunk];
    alignas(64) T acc_logb[kMaxChunk];
    if (!lam.is_tensor) std::fill(lam_buf, lam_buf + kMaxChunk, lam.value);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t m = t / plan.nchunks;
      const int64_t i0 = (t % plan.nchunks) * plan.chunk;
      const int64_t n = std::min(plan.chunk, d - i0);
      const int64_t ngroups = ceil_div(n, philox::kLanes);
      load_row_terms<scalar_t, T>(mu_p, mu_s0, mu_s1, logb_p, lb_s0, lb_s1, m, i0, n, base,
                                  warmup_t, mu_w, ws);
      std::fill(acc_mu, acc_mu + n, T(0));
      std::fill(acc_logb, acc_logb + n, T(0));
      for (int64_t j = 0; j < J; ++j) {
        const int64_t r = m * J + j;
        draw_noise(base, static_cast<uint64_t>(r) * groups + static_cast<uint64_t>(i0 / 4),
                   ngroups, st, bits, eps);
        if (lam.is_tensor) {
          gather_row<T, T>(lam.data + m * lam.s_m + j * lam.s_j + i0 * lam.s_d, lam.s_d, n,
                           lam_buf);
        }
        gather_g(gz_p + (m * gz_s0 + j * gz_s1 + i0 * gz_s2) * gz_item, gz_s2, n, g_buf);
        backward_row_dispatch<T>(est, base, want_glam, n, ws, eps, lam_buf, g_buf, acc_mu,
                                 acc_logb, want_glam ? glam_p + r * d + i0 : nullptr);
      }
      scalar_t* gmu_row = gmu_p + m * d + i0;
      scalar_t* glb_row = glb_p + m * d + i0;
      if (gkl_p != nullptr) {
        const T gkl = gkl_p[m];
        for (int64_t k = 0; k < n; ++k) {
          const T lb_v = static_cast<T>(logb_p[m * lb_s0 + (i0 + k) * lb_s1]);
          T d_mu, d_logb;
          kl_element_grads<T>(mu_w[k], lb_v, base, b0, two_b0, &d_mu, &d_logb);
          gmu_row[k] = static_cast<scalar_t>(acc_mu[k] + gkl * d_mu);
          glb_row[k] = static_cast<scalar_t>(acc_logb[k] + gkl * d_logb);
        }
      } else {
        for (int64_t k = 0; k < n; ++k) {
          gmu_row[k] = static_cast<scalar_t>(acc_mu[k]);
          glb_row[k] = static_cast<scalar_t>(acc_logb[k]);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Argument checks shared by forward and backward.

void check_mu_logb(const at::Tensor& mu, const at::Tensor& logb, int64_t J) {
  TORCH_CHECK(mu.defined() && logb.defined(), "threshold_sample: mu and logb must be tensors");
  TORCH_CHECK(mu.device().is_cpu() && logb.device().is_cpu(),
              "threshold_sample (C++ backend): mu and logb must be CPU tensors, got ",
              mu.device(), " and ", logb.device());
  TORCH_CHECK(mu.dim() == 2, "threshold_sample: mu must be 2-D (M, d), got ", mu.dim(), "-D");
  TORCH_CHECK(logb.sizes() == mu.sizes(), "threshold_sample: logb shape ", logb.sizes(),
              " must match mu shape ", mu.sizes());
  TORCH_CHECK(logb.scalar_type() == mu.scalar_type(), "threshold_sample: logb dtype ",
              logb.scalar_type(), " must match mu dtype ", mu.scalar_type());
  TORCH_CHECK(is_supported_float(mu.scalar_type()),
              "threshold_sample: mu must be float16, bfloat16, float32 or float64, got ",
              mu.scalar_type());
  TORCH_CHECK(J >= 0, "threshold_sample: num_samples must be >= 0, got ", J);
}

philox::Stream read_seed(const at::Tensor& seed) {
  TORCH_CHECK(seed.defined() && seed.device().is_cpu(),
              "threshold_sample (C++ backend): seed must be a CPU tensor");
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 2,
              "threshold_sample: seed must be an int64 tensor [seed, offset] of 2 elements, got ",
              seed.scalar_type(), " with ", seed.numel(), " elements");
  const at::Tensor s = seed.reshape({2}).contiguous();
  const int64_t* p = s.data_ptr<int64_t>();
  return philox::make_stream(p[0], p[1]);
}

at::ScalarType compute_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points.

std::tuple<at::Tensor, std::optional<at::Tensor>> threshold_sample_forward(
    const at::Tensor& mu, const at::Tensor& logb, const std::optional<at::Tensor>& lam_opt,
    double lam_value, const at::Tensor& seed, int64_t J, const std::string& base,
    double warmup, bool return_kl, double prior_scale) {
  check_mu_logb(mu, logb, J);
  const Base base_e = parse_base(base);
  const philox::Stream st = read_seed(seed);
  const int64_t M = mu.size(0), d = mu.size(1);
  const at::ScalarType compute = compute_type_of(mu.scalar_type());

  at::Tensor z = at::empty({M, J, d}, mu.options().memory_format(at::MemoryFormat::Contiguous));
  std::optional<at::Tensor> kl;
  if (return_kl) kl = at::zeros({M}, mu.options().dtype(compute));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, mu.scalar_type(), "threshold_sample_forward", [&] {
        using T = at::opmath_type<scalar_t>;
        const LamView<T> lam = make_lam_view<T>(lam_opt, lam_value, M, J, d, compute);
        forward_kernel<scalar_t>(mu, logb, lam, st, J, base_e, warmup, z);
        if (return_kl) kl_kernel<scalar_t>(mu, logb, base_e, prior_scale, *kl);
      });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> threshold_sample_backward(
    const at::Tensor& grad_z, const std::optional<at::Tensor>& grad_kl_opt, const at::Tensor& mu,
    const at::Tensor& logb, const std::optional<at::Tensor>& lam_opt, double lam_value,
    const at::Tensor& seed, int64_t J, const std::string& base, const std::string& estimator,
    double warmup, double prior_scale, bool lam_requires_grad) {
  check_mu_logb(mu, logb, J);
  const Base base_e = parse_base(base);
  const Estimator est = parse_estimator(estimator);
  const philox::Stream st = read_seed(seed);
  const int64_t M = mu.size(0), d = mu.size(1);
  const at::ScalarType compute = compute_type_of(mu.scalar_type());

  TORCH_CHECK(grad_z.defined() && grad_z.device().is_cpu(),
              "threshold_sample (C++ backend): grad_z must be a CPU tensor");
  TORCH_CHECK(is_supported_float(grad_z.scalar_type()),
              "threshold_sample: grad_z must be float16, bfloat16, float32 or float64, got ",
              grad_z.scalar_type());
  TORCH_CHECK(grad_z.dim() == 3 && grad_z.size(0) == M && grad_z.size(1) == J &&
                  grad_z.size(2) == d,
              "threshold_sample: grad_z must have shape (M, J, d) = (", M, ", ", J, ", ", d,
              "), got ", grad_z.sizes());

  at::Tensor grad_kl;
  const bool has_grad_kl = grad_kl_opt.has_value() && grad_kl_opt->defined();
  if (has_grad_kl) {
    TORCH_CHECK(grad_kl_opt->device().is_cpu(),
                "threshold_sample (C++ backend): grad_kl must be a CPU tensor");
    TORCH_CHECK(is_supported_float(grad_kl_opt->scalar_type()),
                "threshold_sample: grad_kl must be a floating tensor, got ",
                grad_kl_opt->scalar_type());
    TORCH_CHECK(grad_kl_opt->dim() == 1 && grad_kl_opt->size(0) == M,
                "threshold_sample: grad_kl must have shape (M,) = (", M, ",), got ",
                grad_kl_opt->sizes());
    grad_kl = grad_kl_opt->to(compute).contiguous();
  }

  at::Tensor grad_mu = at::empty({M, d}, mu.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_logb = at::empty({M, d}, mu.options().memory_format(at::MemoryFormat::Contiguous));
  std::optional<at::Tensor> grad_lam;
  if (lam_requires_grad) grad_lam = at::empty({M, J, d}, mu.options().dtype(compute));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, mu.scalar_type(), "threshold_sample_backward", [&] {
        using T = at::opmath_type<scalar_t>;
        const LamView<T> lam = make_lam_view<T>(lam_opt, lam_value, M, J, d, compute);
        backward_kernel<scalar_t>(grad_z, has_grad_kl ? &grad_kl : nullptr, mu, logb, lam, st, J,
                                  base_e, est, warmup, prior_scale, grad_mu, grad_logb,
                                  grad_lam.has_value() ? &*grad_lam : nullptr);
      });
  return {grad_mu, grad_logb, grad_lam};
}

}  // namespace vsc
