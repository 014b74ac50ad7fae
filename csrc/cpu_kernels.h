// The vectorized CPU kernels, compiled once per instruction set and chosen at run time.
//
// csrc/vec_kernels.h holds the kernels, written against ATen's at::vec::Vectorized
// (with its SLEEF log/exp) plus intrinsics for the Philox rounds. It is compiled three
// times -- csrc/cpu_kernels_avx512.cpp, cpu_kernels_avx2.cpp (GCC on x86-64 only) and
// cpu_kernels_default.cpp (any compiler, plain C++: the safe fallback) -- and
// kernels() returns the table for the CPU capability that ATen itself uses
// (at::native::get_cpu_capability(), so ATEN_CPU_CAPABILITY=avx2/default also applies
// here). The op files (threshold_sample.cpp, ...) check arguments, allocate and call
// through this table; the interface below uses plain pointers and strides so that no
// ATen type crosses between code compiled for different instruction sets.
#pragma once

#include <cstdint>

namespace vsc {
namespace cpu {

// Element types of the tensors the kernels read and write.
enum class Dtype : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// threshold_sample (see csrc/threshold_sample.cpp for the semantics).
struct ThresholdArgs {
  int64_t M = 0, J = 0, d = 0;
  Dtype dtype = Dtype::kFloat;  // of mu, logb, z, grad_mu and grad_logb
  const void* mu = nullptr;
  int64_t mu_s0 = 0, mu_s1 = 0;
  const void* logb = nullptr;
  int64_t lb_s0 = 0, lb_s1 = 0;
  // lam: the scalar lam_value, or an (M, J, d) view in the compute type (float32;
  // float64 for float64 inputs) read through its strides (0-strides included).
  bool lam_is_tensor = false;
  double lam_value = 0.0;
  const void* lam = nullptr;
  int64_t lam_sm = 0, lam_sj = 0, lam_sd = 0;
  // Philox key and stream offset words (vsc_kernels/_philox.py).
  uint32_t k0 = 0, k1 = 0, o0 = 0, o1 = 0;
  int base = 0;       // 0: Laplace, 1: Gaussian
  int estimator = 0;  // 0: straight, 1: subgradient, 2: straight_shift
  double warmup = 1.0, prior_scale = 1.0;
  // forward output: z (M, J, d) contiguous in dtype.
  void* z = nullptr;
  // backward: grad_z (M, J, d) of any floating dtype and strides; grad_kl (M,)
  // contiguous in the compute type or null; outputs grad_mu, grad_logb (M, d)
  // contiguous in dtype and grad_lam (M, J, d) contiguous in the compute type or null.
  const void* grad_z = nullptr;
  Dtype gz_dtype = Dtype::kFloat;
  int64_t gz_s0 = 0, gz_s1 = 0, gz_s2 = 0;
  const void* grad_kl = nullptr;
  void* grad_mu = nullptr;
  void* grad_logb = nullptr;
  void* grad_lam = nullptr;
};

// elbo_select: x (B, F) contiguous in the compute type, x_hat (B, J, F) with unit
// column stride in its own dtype.
struct SquaredErrorArgs {
  int64_t B = 0, J = 0, F = 0;
  const void* x = nullptr;  // compute type
  const void* x_hat = nullptr;
  Dtype xh_dtype = Dtype::kFloat;
  int64_t xh_sb = 0, xh_sj = 0;
  bool compute_double = false;
  void* out = nullptr;        // forward: E (B, J) compute type
  const void* g = nullptr;    // backward: grad of E (B, J) compute type
  void* grad_x_hat = nullptr; // backward: (B, J, F) contiguous in x_hat's dtype
  void* grad_x = nullptr;     // backward: (B, F) contiguous compute type, or null
  bool every_sample = false;  // backward: every g != 0, so every row of grad_x_hat is written
};

// linear_elbo: rows of the reconstructions A z (sample row r of z -> data row b, sample
// j: b = r / J, j = r % J, or b = r, j = sel[r] when sel is given), from the dense product
// rec (rows, D) when given, else by adding the rows of At for z's non-zeros only. Per row
// either the squared norm ||x_b - A z||^2 (norms) or the scaled residual
// g[r] (x_b - A z) (residual, (rows, D)). x (B, D) and At (d, D) contiguous, compute type.
struct LinearArgs {
  int64_t rows = 0, J = 1, d = 0, D = 0;
  int64_t row0 = 0;  // kernel row i is row row0 + i (outputs are indexed by i)
  const int64_t* sel = nullptr;
  const void* z = nullptr;
  Dtype z_dtype = Dtype::kFloat;
  int64_t z_sb = 0, z_sj = 0, z_sd = 0;
  const void* x = nullptr;
  const void* At = nullptr;
  bool compute_double = false;
  const void* rec = nullptr;
  void* norms = nullptr;
  const void* g = nullptr;
  void* residual = nullptr;
};

struct Kernels {
  const char* capability;
  // Forward of threshold_sample; returns false if a lam entry is negative, NaN or inf.
  bool (*threshold_forward)(const ThresholdArgs&);
  // Per-row KL summed over d into kl (M,) in the compute type.
  void (*threshold_kl)(const ThresholdArgs&, void* kl);
  void (*threshold_backward)(const ThresholdArgs&);
  void (*elbo_squared_error)(const SquaredErrorArgs&);
  void (*elbo_backward)(const SquaredErrorArgs&);
  void (*linear_rows)(const LinearArgs&);
  // out (d, D) = z^T g over z's non-zeros, z (N, d) and g (N, D) contiguous float32; the
  // sums of csrc/sparse_decode.cpp's grad_weight_t (n ascending, from 0), bit for bit;
  // with accumulate, added to out's values (continuing the sums).
  void (*sparse_grad_t_f32)(const float* z, const float* g, int64_t N, int64_t d, int64_t D,
                            float* out, bool accumulate);
};

const Kernels& kernels();

// The tables of each build (null where that build was not compiled).
const Kernels* kernels_avx512();
const Kernels* kernels_avx2();
const Kernels* kernels_default();

}  // namespace cpu
}  // namespace vsc
