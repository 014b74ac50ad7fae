"""Statistics of the samples, with fixed seeds and large samples.

Proposition 3.1: Laplace samples through the shifted soft-threshold are Spike-and-Slab:
exact zeros with probability ``1 - exp(-lam / b)`` and non-zeros ``Laplace(mu, b)``.
For the Gaussian base the zero fraction is ``erf(lam / (sigma sqrt 2))``. Here ``b`` and
``sigma`` include the warm-up factor. Each test also shows it can fail: the same
statistic rejects a wrong parameter.
"""

import math

import pytest
import torch
from scipy import stats

import vsc_kernels

from _utils import require_backend, seeded

BACKENDS = ["reference", "cpp", "triton"]
N = 40_000  # samples per feature


def _device(backend):
    return torch.device("cpu") if backend == "reference" else require_backend(backend)


def _features(device):
    """Four features with their own (mu, b, lam), repeated over N rows by a stride-0
    expand (the kernels read through strides)."""
    mu = torch.tensor([[0.0, 1.5, -2.0, 0.3]], device=device).expand(N, 4)
    logb = torch.log(torch.tensor([[1.0, 0.5, 2.0, 0.1]], device=device)).expand(N, 4)
    lam = torch.tensor([0.5, 0.2, 1.5, 0.05], device=device)
    return mu, logb, lam


@pytest.mark.parametrize("backend", BACKENDS)
def test_laplace_spike_and_slab(backend):
    device = _device(backend)
    mu, logb, lam = _features(device)
    warmup = 0.9
    z = seeded(0, backend, mu, logb, lam, warmup=warmup).cpu().double()
    b = warmup * torch.exp(logb[0]).cpu().double()
    for i in range(z.shape[-1]):
        column = z[:, i]
        p_zero = 1 - math.exp(-lam[i].item() / b[i].item())  # eq. (3)
        zero_fraction = (column == 0).double().mean().item()
        tolerance = 5 * math.sqrt(p_zero * (1 - p_zero) / N)
        assert abs(zero_fraction - p_zero) < tolerance, (i, zero_fraction, p_zero)
        nonzero = column[column != 0].numpy()
        fit = stats.kstest(nonzero, "laplace", args=(mu[0, i].item(), b[i].item()))
        assert fit.pvalue > 1e-3, (i, fit)
        wrong = stats.kstest(nonzero, "laplace", args=(mu[0, i].item(), 1.1 * b[i].item()))
        assert wrong.pvalue < 1e-4, (i, wrong)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussian_zero_fraction_and_tails(backend):
    device = _device(backend)
    mu, logb, lam = _features(device)
    log_variance = 2 * logb  # same sigmas as the Laplace test's b
    z = seeded(1, backend, mu, log_variance, lam, base="gaussian").cpu().double()
    sigma = torch.exp(logb[0]).cpu().double()
    for i in range(z.shape[-1]):
        column, lam_i, sigma_i = z[:, i], lam[i].item(), sigma[i].item()
        p_zero = math.erf(lam_i / (sigma_i * math.sqrt(2)))
        zero_fraction = (column == 0).double().mean().item()
        assert abs(zero_fraction - p_zero) < 5 * math.sqrt(p_zero * (1 - p_zero) / N)
        # Non-zeros: |z - mu| = |delta| - lam given |delta| > lam, delta ~ N(0, sigma^2).
        shrunk = (column[column != 0] - mu[0, i].item()).abs().numpy()
        tail = 2 * stats.norm.sf(lam_i / sigma_i)

        def cdf(t, sigma_=sigma_i):
            return 1 - 2 * stats.norm.sf((t + lam_i) / sigma_) / tail

        assert stats.kstest(shrunk, cdf).pvalue > 1e-3
        assert stats.kstest(shrunk, lambda t: cdf(t, 1.1 * sigma_i)).pvalue < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base", ["laplace", "gaussian"])
def test_samples_are_uncorrelated(backend, base):
    device = _device(backend)
    rows, J, d = 2000, 4, 8
    mu = torch.zeros(rows, d, device=device)
    s = seeded(2, backend, mu, torch.zeros_like(mu), 0.0, num_samples=J, base=base).cpu()
    bound = 4.5 / math.sqrt(rows * d)
    flat = s.double()
    for j in range(1, J):  # along the sample axis
        c = torch.corrcoef(torch.stack([flat[:, 0].reshape(-1), flat[:, j].reshape(-1)]))[0, 1]
        assert abs(c) < bound, (j, c)
    # Neighbouring features share a Philox call (lanes) or a Box-Muller pair.
    for i in range(1, 4):
        c = torch.corrcoef(torch.stack([flat[..., 0].reshape(-1), flat[..., i].reshape(-1)]))
        assert abs(c[0, 1]) < 4.5 / math.sqrt(rows * J), (i, c)
    # Squares too: the Box-Muller pair (cos, sin) is uncorrelated but would show dependence
    # if the radius were reused wrongly.
    sq = flat ** 2
    c = torch.corrcoef(torch.stack([sq[..., 0].reshape(-1), sq[..., 1].reshape(-1)]))[0, 1]
    assert abs(c) < 4.5 / math.sqrt(rows * J)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base", ["laplace", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_log_scales_are_finite(backend, base, dtype):
    device = _device(backend)
    mu = torch.linspace(-3, 3, 64).repeat(4, 1).to(device, dtype)
    logb = torch.tensor([20.0, -20.0, 20.0, -20.0])[:, None].expand(4, 64).to(device, dtype)
    mu.requires_grad_(), logb.requires_grad_()
    z, kl = seeded(3, backend, mu, logb, 0.1, num_samples=5, base=base, return_kl=True)
    assert torch.isfinite(z).all() and torch.isfinite(kl).all()
    (z.float().sum() + kl.float().sum()).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(logb.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_manual_seed_reproduces_and_calls_differ(backend):
    device = _device(backend)
    mu = torch.randn(16, 32, device=device)
    logb = torch.zeros_like(mu)
    first = seeded(7, backend, mu, logb, 0.3, num_samples=2)
    again = seeded(7, backend, mu, logb, 0.3, num_samples=2)
    assert torch.equal(first, again)
    follow_up = vsc_kernels.threshold_sample(mu, logb, 0.3, num_samples=2, backend=backend)
    assert not torch.equal(first, follow_up)
    g1, g2 = torch.Generator(device=device), torch.Generator(device=device)
    a = vsc_kernels.threshold_sample(mu, logb, 0.3, generator=g1.manual_seed(5), backend=backend)
    torch.randn(10, device=device)  # the default generator's state does not matter
    b = vsc_kernels.threshold_sample(mu, logb, 0.3, generator=g2.manual_seed(5), backend=backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_backward_saves_no_sample_sized_tensor(backend):
    """Backward regenerates the noise: nothing of size (B, J, d) is kept for it."""
    device = require_backend(backend)
    rows, J, d = 8, 16, 32
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    mu = torch.randn(rows, d, device=device, requires_grad=True)
    logb = torch.zeros(rows, d, device=device, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = seeded(0, backend, mu, logb, 0.2, num_samples=J)
    assert saved and max(saved) <= rows * d
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.full_like(mu, J))


@pytest.mark.parametrize("base,prior_scale", [("laplace", 0.1), ("laplace", 2.0),
                                              ("gaussian", 0.1), ("gaussian", 3.0)])
def test_kl_divergence_matches_numerical_integration(base, prior_scale):
    from scipy import integrate

    for mu, logb in [(0.0, 0.0), (1.3, -0.7), (-0.4, 0.9)]:
        ours = vsc_kernels.kl_divergence(torch.tensor([mu], dtype=torch.float64),
                                         torch.tensor([logb], dtype=torch.float64),
                                         base=base, prior_scale=prior_scale).item()
        if base == "laplace":
            q = stats.laplace(mu, math.exp(logb))
            p = stats.laplace(0, prior_scale)
        else:
            q = stats.norm(mu, math.exp(0.5 * logb))
            p = stats.norm(0, math.sqrt(prior_scale))
        lo, hi = q.ppf(1e-12), q.ppf(1 - 1e-12)
        value, _ = integrate.quad(lambda x: q.pdf(x) * (q.logpdf(x) - p.logpdf(x)), lo, hi,
                                  points=[mu, 0.0], limit=200)
        assert abs(ours - value) < 1e-6 * max(1.0, abs(value)), (mu, logb, ours, value)
