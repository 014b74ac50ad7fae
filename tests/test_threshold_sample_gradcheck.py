"""Gradient checks in float64.

* ``estimator="subgradient"`` is the exact almost-everywhere derivative of the forward
  map, so ``torch.autograd.gradcheck`` applies directly.
* The straight-through estimators are by design *not* the derivative of ``z = T(s)``;
  they are the derivative of eq. (4)'s surrogate ``z~ = s + T(sg[s]) - sg[s]``, where
  ``sg[s]`` stays at the unperturbed point. We check them against central finite
  differences of that surrogate, built independently here from the noise spec.

The backends that compute in float64 for float64 inputs (reference, cpp) run both; the
Triton kernels compute in float32 and are compared with the reference in
``test_threshold_sample_backends.py``.
"""

import pytest
import torch

import vsc_kernels
from vsc_kernels import _philox

from _utils import require_backend

BACKENDS = ["reference", "cpp"]
LAM_KINDS = ["fixed", "learned"]


def _problem(lam_kind, J=3, d=6, rows=4):
    g = torch.Generator().manual_seed(21)
    mu = torch.randn(rows, d, generator=g, dtype=torch.float64)
    logb = 0.4 * torch.randn(rows, d, generator=g, dtype=torch.float64) - 0.3
    lam = 0.25 if lam_kind == "fixed" else 0.5 * torch.rand(rows, J, d, generator=g,
                                                            dtype=torch.float64) + 0.05
    return mu, logb, lam, J


def _op(backend, estimator, base, lam_is_tensor, J, return_kl=False):
    def fn(mu, logb, *lam):
        lam = lam[0] if lam_is_tensor else 0.25
        out = vsc_kernels.threshold_sample(
            mu, logb, lam, num_samples=J, base=base, estimator=estimator, warmup=0.8,
            generator=torch.Generator().manual_seed(1234), backend=backend,
            return_kl=return_kl, prior_scale=0.3)
        return out
    return fn


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base", ["laplace", "gaussian"])
@pytest.mark.parametrize("lam_kind", LAM_KINDS)
def test_gradcheck_subgradient(backend, base, lam_kind):
    if backend != "reference":
        require_backend(backend)
    mu, logb, lam, J = _problem(lam_kind)
    inputs = [mu.requires_grad_(), logb.requires_grad_()]
    if isinstance(lam, torch.Tensor):
        inputs.append(lam.requires_grad_())
    fn = _op(backend, "subgradient", base, isinstance(lam, torch.Tensor), J, return_kl=True)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def _surrogate_numerical_jacobian(mu, logb, lam, J, base, estimator, seed, h=1e-6):
    """Central differences of eq. (4)'s surrogate with sg[s] frozen at the input point."""
    rows, d = mu.shape
    eps = _philox.base_noise(base, seed, rows * J, d, torch.float64).reshape(rows, J, d)

    def delta(logb_):
        scale = torch.exp(logb_) if base == "laplace" else torch.exp(0.5 * logb_)
        return 0.8 * scale[:, None, :] * eps

    lam_full = lam if isinstance(lam, torch.Tensor) else torch.full((rows, J, d), lam,
                                                                    dtype=torch.float64)
    delta0 = delta(logb)
    sign0 = torch.sign(delta0)
    active0 = (delta0.abs() > lam_full).double()
    mu0 = mu

    def surrogate(mu_, logb_, lam_):
        s = mu_[:, None, :] + delta(logb_)          # s, differentiable
        s_sg = mu0[:, None, :] + delta0             # sg[s]
        thresholded = active0 * (s_sg - sign0 * lam_)  # T(sg[s]; lam)
        z = s + thresholded - s_sg
        if estimator == "straight_shift":
            z = z + active0 * (mu_ - mu0)[:, None, :]
        return z

    point = [mu, logb, lam_full]
    jac = []
    for k, x in enumerate(point):
        cols = []
        for idx in range(x.numel()):
            plus = [p.clone() for p in point]
            minus = [p.clone() for p in point]
            plus[k].view(-1)[idx] += h
            minus[k].view(-1)[idx] -= h
            cols.append(((surrogate(*plus) - surrogate(*minus)) / (2 * h)).reshape(-1))
        jac.append(torch.stack(cols, dim=1))
    return jac


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["straight", "straight_shift"])
@pytest.mark.parametrize("base", ["laplace", "gaussian"])
@pytest.mark.parametrize("lam_kind", LAM_KINDS)
def test_straight_through_matches_surrogate_jacobian(backend, estimator, base, lam_kind):
    if backend != "reference":
        require_backend(backend)
    mu, logb, lam, J = _problem(lam_kind, J=2, d=5, rows=3)
    lam_is_tensor = isinstance(lam, torch.Tensor)
    fn = _op(backend, estimator, base, lam_is_tensor, J)
    inputs = (mu, logb) + ((lam,) if lam_is_tensor else ())
    analytic = torch.autograd.functional.jacobian(fn, inputs)
    seed = _philox.draw_seed(torch.device("cpu"), torch.Generator().manual_seed(1234))
    numeric = _surrogate_numerical_jacobian(mu, logb, lam, J, base, estimator, seed)
    for k, name in enumerate(("mu", "logb", "lam")[:len(inputs)]):
        got = analytic[k].reshape(numeric[k].shape[0], -1)
        torch.testing.assert_close(got, numeric[k], atol=1e-6, rtol=1e-6, msg=f"d z / d {name}")
    if not lam_is_tensor:
        return
    # The Jacobian for a fixed float lam has no lam column, and the learned one is
    # non-zero exactly on the active entries.
    assert (analytic[2].reshape(numeric[2].shape[0], -1).abs().sum() > 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base", ["laplace", "gaussian"])
def test_gradcheck_kl_divergence(backend, base):
    if backend != "reference":
        require_backend(backend)
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    logb = (0.5 * torch.randn(3, 7, generator=g, dtype=torch.float64)).requires_grad_()

    def kl_only(mu_, logb_):
        _, kl = vsc_kernels.threshold_sample(mu_, logb_, 0.1, base=base, return_kl=True,
                                             prior_scale=0.2, backend=backend)
        return kl

    assert torch.autograd.gradcheck(kl_only, (mu, logb), eps=1e-6, atol=1e-7)
    fused = kl_only(mu, logb)
    standalone = vsc_kernels.kl_divergence(mu, logb, base=base, prior_scale=0.2).sum(-1)
    torch.testing.assert_close(fused, standalone)
