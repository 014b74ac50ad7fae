// The per-sample loss and the selection over the J samples (vsc_kernels/_elbo.py), fused
// into the C++ forward of linear_elbo and elbo_select so that an eager call is one
// kernel call (the (B, J) work is small; this is the same math, in the same order):
//
//   L[b, j] = E[b, j] * scale + beta * kl[b, (j)]
//   index[b] = the first j with the lowest L (a NaN counts as lowest, as torch.argmin)
//   "max":  l_b = L[b, index[b]],                weights = one-hot(index)
//   "avg":  l_b = mean_j L[b, j],                weights = 1 / J
//   "iwae": l_b = log J - logsumexp_j(-L[b, j]), weights = softmax_j(-L[b, :])
//   "softmin": w = softmax_j(-L[b, :]), l_b = sum_j w_j L[b, j],
//              weights = w_k (1 - L[b, k] + l_b) (its gradient, the weights not detached)
//   loss = mean_b l_b (0 for an empty batch)
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

namespace vsc {

enum class Selection : int { kMax = 0, kAvg = 1, kIwae = 2, kSoftmin = 3 };

inline Selection parse_selection(const std::string& method) {
  if (method == "max") return Selection::kMax;
  if (method == "avg") return Selection::kAvg;
  if (method == "softmin") return Selection::kSoftmin;
  TORCH_CHECK_VALUE(method == "iwae", "method must be 'max', 'avg', 'iwae' or 'softmin', got '",
                    method, "'");
  return Selection::kIwae;
}

// E (B, J) in T; kl: null, (B,) or (B, J) (kl_per_sample) in T. Writes per_sample,
// weights (B, J), index (B,) and returns the loss.
template <typename T>
T select_samples(const T* E, int64_t B, int64_t J, const T* kl, bool kl_per_sample, T beta,
                 T scale, Selection method, T* per_sample, int64_t* index, T* weights) {
  double total = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    const T* e = E + b * J;
    T* L = per_sample + b * J;
    T* w = weights + b * J;
    int64_t best = 0;
    for (int64_t j = 0; j < J; ++j) {
      T v = e[j] * scale;
      if (kl != nullptr) v = v + beta * (kl_per_sample ? kl[b * J + j] : kl[b]);
      L[j] = v;
      const T cur = L[best];
      if (!std::isnan(cur) && (std::isnan(v) || v < cur)) best = j;
    }
    index[b] = best;
    T row;
    if (method == Selection::kMax) {
      row = L[best];
      for (int64_t j = 0; j < J; ++j) w[j] = j == best ? T(1) : T(0);
    } else if (method == Selection::kAvg) {
      T sum = T(0);
      for (int64_t j = 0; j < J; ++j) sum += L[j];
      row = sum / static_cast<T>(J);
      const T inv = static_cast<T>(1.0 / static_cast<double>(J));
      for (int64_t j = 0; j < J; ++j) w[j] = inv;
    } else {
      // logsumexp and softmax of -L with torch's max shift (an infinite max is not shifted).
      T m = -L[0];  // amax, NaN-propagating
      for (int64_t j = 1; j < J && !std::isnan(m); ++j) {
        const T v = -L[j];
        if (std::isnan(v) || v > m) m = v;
      }
      T soft = T(0);
      for (int64_t j = 0; j < J; ++j) {
        w[j] = std::exp(-L[j] - m);
        soft += w[j];
      }
      for (int64_t j = 0; j < J; ++j) w[j] = w[j] / soft;
      if (method == Selection::kIwae) {
        const T shift = std::isinf(m) ? T(0) : m;
        T sum = T(0);
        for (int64_t j = 0; j < J; ++j) sum += std::exp(-L[j] - shift);
        row = static_cast<T>(std::log(static_cast<double>(J))) - (std::log(sum) + shift);
      } else {  // softmin, as torch: (w * L).sum(), then w * (1 - (L - row))
        row = T(0);
        for (int64_t j = 0; j < J; ++j) row += w[j] * L[j];
        for (int64_t j = 0; j < J; ++j) w[j] = w[j] * (T(1) - (L[j] - row));
      }
    }
    total += static_cast<double>(row);
  }
  return B > 0 ? static_cast<T>(total / static_cast<double>(B)) : T(0);
}

// Runs select_samples on E (B, J) (compute type) and returns
// (loss (), per_sample (B, J), index (B,), weights (B, J)).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_tensors(
    const at::Tensor& E, const std::optional<at::Tensor>& kl_opt, double beta, double scale,
    const std::string& method) {
  const Selection sel = parse_selection(method);
  const int64_t B = E.size(0), J = E.size(1);
  TORCH_CHECK_VALUE(J >= 1, "z must hold at least one sample (J >= 1)");
  const at::ScalarType work = E.scalar_type();
  at::Tensor kl;
  if (kl_opt.has_value() && kl_opt->defined()) kl = kl_opt->to(work).contiguous();
  at::Tensor per_sample = at::empty({B, J}, E.options());
  at::Tensor weights = at::empty({B, J}, E.options());
  at::Tensor index = at::empty({B}, E.options().dtype(at::kLong));
  at::Tensor loss = at::empty({}, E.options());
  const at::Tensor Ec = E.contiguous();
  AT_DISPATCH_FLOATING_TYPES(work, "select_samples", [&] {
    const scalar_t value = select_samples<scalar_t>(
        Ec.const_data_ptr<scalar_t>(), B, J, kl.defined() ? kl.const_data_ptr<scalar_t>() : nullptr,
        kl.defined() && kl.dim() == 2, static_cast<scalar_t>(beta), static_cast<scalar_t>(scale),
        sel, per_sample.mutable_data_ptr<scalar_t>(), index.mutable_data_ptr<int64_t>(),
        weights.mutable_data_ptr<scalar_t>());
    loss.fill_(value);
  });
  return {loss, per_sample, index, weights};
}

}  // namespace vsc
