"""Every kernel backend against the plain-PyTorch reference, element for element.

Both sides draw the same Philox noise for the same seed, so outputs and gradients are
compared directly, per dtype with the tolerances of ``_utils.DTYPE_TOLERANCES``.
"""

import pytest
import torch

from _utils import DTYPE_TOLERANCES, KERNEL_BACKENDS, num_threads, require_backend, seeded

SHAPES = [  # (leading shape of mu, d, num_samples)
    ((7,), 37, 3),
    ((1,), 1, 1),
    ((5,), 256, 20),
    ((2, 3), 13, 4),
    ((9,), 341, None),
    ((4,), 5, None),
]


def _inputs(lead, d, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(*lead, d, generator=g).to(device, dtype)
    logb = (0.5 * torch.randn(*lead, d, generator=g) - 0.5).to(device, dtype)
    return mu, logb


def _lam(kind, lead, d, J, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(99)
    sample_axis = () if J is None else (J,)
    shapes = {
        "zero": None, "float": None,
        "feature": (d,),
        "row": (*lead, *((1,) if J is not None else ()), 1),
        "sample": (*lead, *sample_axis, d),
    }
    if kind == "zero":
        return 0.0
    if kind == "float":
        return 0.4
    return (0.6 * torch.rand(*shapes[kind], generator=g)).to(device, dtype)


def _assert_close(actual, expected, atol, rtol, what):
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=what)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("lead,d,J", SHAPES)
@pytest.mark.parametrize("base", ["laplace", "gaussian"])
def test_forward_matches_reference(backend, dtype, atol, rtol, lead, d, J, base):
    device = require_backend(backend)
    mu, logb = _inputs(lead, d, device, dtype)
    for lam_kind in ("zero", "float", "feature", "row", "sample"):
        lam = _lam(lam_kind, lead, d, J, device)
        kwargs = dict(num_samples=J, base=base, warmup=0.7, return_kl=True, prior_scale=0.1)
        z, kl = seeded(1, backend, mu, logb, lam, **kwargs)
        z_ref, kl_ref = seeded(1, "reference", mu, logb, lam, **kwargs)
        _assert_close(z, z_ref, atol, rtol, f"z ({lam_kind})")
        # Exactly the same entries are zero (the threshold decision is made in float32 on
        # identical noise).
        assert torch.equal(z == 0, z_ref == 0), f"zero pattern differs ({lam_kind})"
        _assert_close(kl, kl_ref, atol * d, rtol, f"kl ({lam_kind})")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("estimator", ["straight", "subgradient", "straight_shift"])
@pytest.mark.parametrize("base", ["laplace", "gaussian"])
@pytest.mark.parametrize("lam_kind", ["float", "feature", "sample", "row"])
def test_backward_matches_reference(backend, estimator, base, lam_kind):
    device = require_backend(backend)
    lead, d, J = (6,), 41, 5
    results = []
    for name in (backend, "reference"):
        mu, logb = _inputs(lead, d, device, torch.float32)
        lam = _lam(lam_kind, lead, d, J, device)
        leaves = [mu.requires_grad_(), logb.requires_grad_()]
        if isinstance(lam, torch.Tensor):
            leaves.append(lam.requires_grad_())
        z, kl = seeded(3, name, mu, logb, lam, num_samples=J, base=base, estimator=estimator,
                       warmup=0.9, return_kl=True, prior_scale=0.5)
        weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(5)).to(device)
        kl_weights = torch.randn(kl.shape, generator=torch.Generator().manual_seed(6)).to(device)
        ((z * weights).sum() + (kl * kl_weights).sum()).backward()
        results.append([leaf.grad for leaf in leaves])
    for got, want, name in zip(*results, ("mu", "logb", "lam")):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"grad {name}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLERANCES[1:])
def test_low_precision_gradients(backend, dtype, atol, rtol):
    device = require_backend(backend)
    grads = []
    for name in (backend, "reference"):
        mu, logb = _inputs((8,), 64, device, dtype)
        mu.requires_grad_(), logb.requires_grad_()
        z = seeded(4, name, mu, logb, 0.3, num_samples=6)
        weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(8)).to(device, dtype)
        (z * weights).float().sum().backward()
        assert mu.grad.dtype == dtype and logb.grad.dtype == dtype
        grads.append((mu.grad, logb.grad))
    for got, want in zip(*grads):
        # Gradients accumulate the J samples in float32 on both sides.
        torch.testing.assert_close(got.float(), want.float(), atol=atol * 4, rtol=rtol)


def test_large_output_cpp():
    """A z above 16 MiB (rows of d = 1001, tasks of whole rows), per-sample lam: same
    values as the reference."""
    require_backend("cpp")
    mu, logb = _inputs((256,), 1001, "cpu", torch.float32)
    lam = (0.5 * torch.rand(256, 17, 1001, generator=torch.Generator().manual_seed(1)))
    z = seeded(6, "cpp", mu, logb, lam, num_samples=17)
    assert z.numel() * z.element_size() >= 16 << 20
    z_ref = seeded(6, "reference", mu, logb, lam, num_samples=17)
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(z == 0, z_ref == 0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("M,J,d", [(528, 16, 1001), (2, 4200, 1001)],
                         ids=["whole-row tasks", "column-chunk tasks"])
def test_outputs_above_the_prefault_size_cpp(M, J, d, threads):
    """z and grad_lam above 32 MiB, whose pages the C++ kernels map in batches ahead of
    their writes (csrc/prefault.h), per thread's part of the rows: same values as the
    reference. Two rows of mu are cut into column chunks, so that both threads write
    into the same rows."""
    require_backend("cpp")
    assert M * J * d * 4 >= 32 << 20
    with num_threads(threads):
        results = []
        for name in ("cpp", "reference"):
            mu, logb = _inputs((M,), d, "cpu", torch.float32, seed=3)
            lam = torch.full((M, J, d), 0.4).requires_grad_()
            z = seeded(7, name, mu, logb, lam, num_samples=J)
            z.backward(torch.ones_like(z))
            results.append((z.detach(), lam.grad))
            del z, lam
    (z, grad_lam), (z_ref, grad_lam_ref) = results
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(z == 0, z_ref == 0)
    assert torch.equal(grad_lam, grad_lam_ref)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous_inputs(backend):
    device = require_backend(backend)
    base_mu = torch.randn(48, 20).to(device)
    base_logb = (0.3 * torch.randn(48, 20)).to(device)
    mu, logb = base_mu.t()[:, ::2], base_logb.t()[:, ::2]  # (20, 24), strided both ways
    assert not mu.is_contiguous()
    lam = (0.5 * torch.rand(24)).to(device)[None, None, :].expand(20, 3, 24)
    z = seeded(2, backend, mu, logb, lam, num_samples=3)
    z_ref = seeded(2, "reference", mu.contiguous(), logb.contiguous(), lam.contiguous(),
                   num_samples=3)
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_empty_inputs(backend):
    device = require_backend(backend)
    for shape in ((0, 8), (4, 0)):
        mu = torch.zeros(shape, device=device, requires_grad=True)
        z, kl = seeded(0, backend, mu, torch.zeros(shape, device=device), 0.1, num_samples=2,
                       return_kl=True)
        assert z.shape == (shape[0], 2, shape[1]) and kl.shape == (shape[0],)
        z.sum().backward()
        assert mu.grad.shape == shape


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_mixed_input_dtypes_promote(backend):
    device = require_backend(backend)
    mu = torch.randn(4, 16).to(device, torch.bfloat16)
    logb = torch.zeros(4, 16, device=device, dtype=torch.float32)
    z = seeded(0, backend, mu, logb, 0.2)
    assert z.dtype == torch.float32
