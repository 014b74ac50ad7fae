// The one Python module of the C++ backend (vsc_kernels_cpu): every op file in
// csrc/ declares its entry points in a header and they are bound here.
// torch/python.h: pybind11 with the at::Tensor / std::optional casters, without
// the whole C++ frontend that torch/extension.h also pulls in (faster build).
#include <torch/python.h>

#include "elbo_select.h"
#include "fista.h"
#include "linear_elbo.h"
#include "sparse_decode.h"
#include "threshold_sample.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vsc_kernels C++/OpenMP CPU kernels";
  m.def("threshold_sample_forward", &vsc::threshold_sample_forward,
        "threshold_sample forward: (z, kl or None)", py::arg("mu"), py::arg("logb"),
        py::arg("lam"), py::arg("lam_value"), py::arg("seed"), py::arg("num_samples"),
        py::arg("base"), py::arg("warmup"), py::arg("return_kl"), py::arg("prior_scale"));
  m.def("threshold_sample_backward", &vsc::threshold_sample_backward,
        "threshold_sample backward: (grad_mu, grad_logb, grad_lam or None)", py::arg("grad_z"),
        py::arg("grad_kl"), py::arg("mu"), py::arg("logb"), py::arg("lam"), py::arg("lam_value"),
        py::arg("seed"), py::arg("num_samples"), py::arg("base"), py::arg("estimator"),
        py::arg("warmup"), py::arg("prior_scale"), py::arg("lam_requires_grad"));
  m.def("cpu_capability", &vsc::cpu_kernels_capability,
        "instruction set of the vectorized kernels: avx512, avx2 or default");
  m.def("fista_solve", &vsc::fista_solve,
        "batched FISTA from the Gram matrix: (codes, n_iter, converged)", py::arg("gram"),
        py::arg("c"), py::arg("lam"), py::arg("z0"), py::arg("lipschitz"), py::arg("max_iter"),
        py::arg("tol"), py::arg("nonneg"), py::arg("A") = py::none());
  m.def("elbo_select_squared_error", &vsc::elbo_select_squared_error,
        "elbo_select forward: E[b, j] = sum_f (x_hat[b, j, f] - x[b, f])^2", py::arg("x"),
        py::arg("x_hat"));
  m.def("elbo_select_forward", &vsc::elbo_select_forward,
        "elbo_select fused forward: (loss, per_sample, index, weights)", py::arg("x"),
        py::arg("x_hat"), py::arg("kl"), py::arg("beta"), py::arg("scale"), py::arg("method"));
  m.def("elbo_select_backward", &vsc::elbo_select_backward,
        "elbo_select backward: (grad_x_hat, grad_x or None)", py::arg("grad_sq_err"),
        py::arg("x"), py::arg("x_hat"), py::arg("need_x"));
  m.def("sparse_decode_forward", &vsc::sparse_decode_forward,
        "z @ At skipping the zeros of z (N, d); At (d, D)", py::arg("z"), py::arg("At"));
  m.def("sparse_decode_grad_weight_t", &vsc::sparse_decode_grad_weight_t,
        "z^T @ grad_out skipping the zeros of z (N, d); grad_out (N, D)", py::arg("z"),
        py::arg("grad_out"));
  m.def("linear_elbo_squared_error", &vsc::linear_elbo_squared_error,
        "linear_elbo forward: E (B, J) = ||x_b - A z_bj||^2", py::arg("x"), py::arg("z"),
        py::arg("A"), py::arg("chunk_elements") = int64_t{1} << 22);
  m.def("linear_elbo_forward", &vsc::linear_elbo_forward,
        "linear_elbo fused forward: (loss, per_sample, index, weights)", py::arg("x"),
        py::arg("z"), py::arg("A"), py::arg("kl"), py::arg("beta"), py::arg("scale"),
        py::arg("method"), py::arg("chunk_elements"));
  m.def("linear_elbo_backward", &vsc::linear_elbo_backward,
        "linear_elbo backward: (grad_x, grad_z, grad_A), None where not needed",
        py::arg("grad_E"), py::arg("index"), py::arg("x"), py::arg("z"), py::arg("A"),
        py::arg("need_x"), py::arg("need_z"), py::arg("need_A"), py::arg("chunk_elements"));
  m.def("linear_elbo_residual", &vsc::linear_elbo_residual,
        "g (x_b - A z_bj) for all samples (B * J, D) or the selected ones (B, D); and nnz",
        py::arg("x"), py::arg("z"), py::arg("A"), py::arg("g"), py::arg("index"),
        py::arg("chunk_elements"));
}
