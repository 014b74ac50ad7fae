// threshold_sample on the CPU: argument checks, allocation and the calls into the
// vectorized kernels (csrc/vec_kernels.h, chosen per instruction set by
// csrc/cpu_kernels.cpp), with the semantics of the backend contract in
// vsc_kernels/threshold_sample/reference.py (threshold_sample_forward,
// threshold_sample_backward, kl_divergence, kl_divergence_grads).
//
// Math is float32 for float16/bfloat16/float32 inputs and float64 for float64, in the
// same order of operations as the reference. lam entries that are negative, NaN or inf
// raise ValueError (the kernel checks them while it reads them: no extra pass).

#include "threshold_sample.h"

#include <algorithm>
#include <cstdint>

#include <c10/util/Exception.h>

#include "cpu_kernels.h"
#include "cpu_memory.h"
#include "philox.h"

namespace vsc {
namespace {

int parse_base(const std::string& base) {
  if (base == "laplace") return 0;
  if (base == "gaussian") return 1;
  TORCH_CHECK_VALUE(false, "threshold_sample: base must be 'laplace' or 'gaussian', got '", base,
                    "'");
}

int parse_estimator(const std::string& estimator) {
  if (estimator == "straight") return 0;
  if (estimator == "subgradient") return 1;
  if (estimator == "straight_shift") return 2;
  TORCH_CHECK_VALUE(false,
                    "threshold_sample: estimator must be 'straight', 'subgradient' or "
                    "'straight_shift', got '",
                    estimator, "'");
}

// lam: None (the scalar lam_value) or an (M, J, d) view read through its strides. A view
// of another dtype is converted without materializing its broadcast: the 0-stride dims
// are narrowed to size 1, the small tensor is converted, and expanded back.
at::Tensor lam_in_compute_type(const std::optional<at::Tensor>& lam_opt, int64_t M, int64_t J,
                               int64_t d, at::ScalarType compute) {
  if (!lam_opt.has_value() || !lam_opt->defined()) return at::Tensor();
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
  return lam;
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
  const int64_t* p = seed.data_ptr<int64_t>();
  const int64_t step = seed.dim() == 1 ? seed.stride(0) : 1;
  if (seed.dim() != 1 && !seed.is_contiguous()) {
    const at::Tensor s = seed.reshape({2}).contiguous();
    return philox::make_stream(s.data_ptr<int64_t>()[0], s.data_ptr<int64_t>()[1]);
  }
  return philox::make_stream(p[0], p[step]);
}

at::ScalarType compute_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace


// ---------------------------------------------------------------------------
// Entry points.

namespace {

cpu::ThresholdArgs make_args(const at::Tensor& mu, const at::Tensor& logb, const at::Tensor& lam,
                             double lam_value, const philox::Stream& st, int64_t J, int base,
                             double warmup, double prior_scale) {
  cpu::ThresholdArgs a;
  a.M = mu.size(0);
  a.J = J;
  a.d = mu.size(1);
  a.dtype = dtype_of(mu.scalar_type());
  a.mu = mu.data_ptr();
  a.mu_s0 = mu.stride(0);
  a.mu_s1 = mu.stride(1);
  a.logb = logb.data_ptr();
  a.lb_s0 = logb.stride(0);
  a.lb_s1 = logb.stride(1);
  a.lam_value = lam_value;
  if (lam.defined()) {
    a.lam_is_tensor = true;
    a.lam = lam.numel() > 0 ? lam.data_ptr() : nullptr;
    a.lam_sm = lam.stride(0);
    a.lam_sj = lam.stride(1);
    a.lam_sd = lam.stride(2);
  }
  a.k0 = st.k0;
  a.k1 = st.k1;
  a.o0 = st.o0;
  a.o1 = st.o1;
  a.base = base;
  a.warmup = warmup;
  a.prior_scale = prior_scale;
  return a;
}

}  // namespace

std::tuple<at::Tensor, std::optional<at::Tensor>> threshold_sample_forward(
    const at::Tensor& mu, const at::Tensor& logb, const std::optional<at::Tensor>& lam_opt,
    double lam_value, const at::Tensor& seed, int64_t J, const std::string& base,
    double warmup, bool return_kl, double prior_scale) {
  check_mu_logb(mu, logb, J);
  const int base_e = parse_base(base);
  const philox::Stream st = read_seed(seed);
  const int64_t M = mu.size(0), d = mu.size(1);
  const at::ScalarType compute = compute_type_of(mu.scalar_type());
  const at::Tensor lam = lam_in_compute_type(lam_opt, M, J, d, compute);

  at::Tensor z = empty_output({M, J, d}, mu.options());
  std::optional<at::Tensor> kl;
  cpu::ThresholdArgs args = make_args(mu, logb, lam, lam_value, st, J, base_e, warmup,
                                      prior_scale);
  args.z = z.data_ptr();
  const cpu::Kernels& k = cpu::kernels();
  const bool lam_ok = k.threshold_forward(args);
  TORCH_CHECK_VALUE(lam_ok,
                    "threshold_sample: lam must be finite and >= 0 everywhere (it holds a "
                    "negative, NaN or inf entry)");
  if (return_kl) {
    kl = at::empty({M}, mu.options().dtype(compute));
    k.threshold_kl(args, kl->data_ptr());
  }
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> threshold_sample_backward(
    const at::Tensor& grad_z, const std::optional<at::Tensor>& grad_kl_opt, const at::Tensor& mu,
    const at::Tensor& logb, const std::optional<at::Tensor>& lam_opt, double lam_value,
    const at::Tensor& seed, int64_t J, const std::string& base, const std::string& estimator,
    double warmup, double prior_scale, bool lam_requires_grad) {
  check_mu_logb(mu, logb, J);
  const int base_e = parse_base(base);
  const int est = parse_estimator(estimator);
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
  if (grad_kl_opt.has_value() && grad_kl_opt->defined()) {
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
  const at::Tensor lam = lam_in_compute_type(lam_opt, M, J, d, compute);

  at::Tensor grad_mu = at::empty({M, d}, mu.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_logb = at::empty({M, d}, mu.options().memory_format(at::MemoryFormat::Contiguous));
  std::optional<at::Tensor> grad_lam;
  if (lam_requires_grad) grad_lam = empty_output({M, J, d}, mu.options().dtype(compute));

  cpu::ThresholdArgs args = make_args(mu, logb, lam, lam_value, st, J, base_e, warmup,
                                      prior_scale);
  args.estimator = est;
  args.grad_z = grad_z.numel() > 0 ? grad_z.data_ptr() : nullptr;
  args.gz_dtype = dtype_of(grad_z.scalar_type());
  args.gz_s0 = grad_z.stride(0);
  args.gz_s1 = grad_z.stride(1);
  args.gz_s2 = grad_z.stride(2);
  args.grad_kl = grad_kl.defined() ? grad_kl.data_ptr() : nullptr;
  args.grad_mu = grad_mu.data_ptr();
  args.grad_logb = grad_logb.data_ptr();
  args.grad_lam = grad_lam.has_value() && grad_lam->numel() > 0 ? grad_lam->data_ptr() : nullptr;
  if (M > 0 && d > 0) cpu::kernels().threshold_backward(args);
  return {grad_mu, grad_logb, grad_lam};
}

const char* cpu_kernels_capability() { return cpu::kernels().capability; }

}  // namespace vsc
