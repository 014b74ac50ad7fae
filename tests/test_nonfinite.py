"""The non-finite policy (vsc_kernels/__init__.py), per op, input and backend.

NaN and inf in an input propagate to every output element computed from it -- never a
zero, a plausible finite number or a "converged" -- and each kernel backend gives the
reference's result there (NaN where it has NaN, the same infinities); where an op promises
a finite result and checking costs no host synchronisation it raises ValueError naming the
argument instead. One call per (op, input, backend): NaN, +inf and -inf are planted in
different rows of the same tensor.
"""

import pytest
import torch

from vsc_kernels import elbo_select, fista, linear_elbo, sparse_decode
from vsc_kernels.elbo_select import reference as elbo_reference

from _utils import KERNEL_BACKENDS, require_backend, seeded

NAN, INF = float("nan"), float("inf")
ALL_BACKENDS = ("reference",) + KERNEL_BACKENDS


def _device(backend):
    return torch.device("cpu") if backend == "reference" else require_backend(backend)


def _same(got, want, what):
    """Equal values with NaN where the reference has NaN (and the same infinities)."""
    torch.testing.assert_close(got.cpu().double(), want.cpu().double(), equal_nan=True,
                               atol=1e-5, rtol=1e-5, msg=what)


def _same_finiteness(got, want, what):
    """Non-finite exactly where the reference is (NaN or inf: the reference's straight-
    through arithmetic z = s + (T(s) - s) turns an infinite s into NaN where the kernels
    write the infinity), and equal where finite."""
    got, want = got.cpu().double(), want.cpu().double()
    assert torch.equal(torch.isfinite(got), torch.isfinite(want)), what
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], atol=1e-5, rtol=1e-5, msg=what)


def _plant(t, where, values=(NAN, INF, -INF)):
    t = t.clone()
    for index, value in zip(where, values):
        t[index] = value
    return t


# --------------------------------------------------------------------------------------
# threshold_sample
# --------------------------------------------------------------------------------------

def _ts_inputs(M=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(M, d, generator=g)
    logb = 0.3 * torch.randn(M, d, generator=g) - 0.5
    return mu, logb


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["mu", "logb"])
@pytest.mark.parametrize("base", ["laplace", "gaussian"])
def test_threshold_sample_non_finite_inputs_propagate(backend, name, base):
    device = _device(backend)
    mu, logb = _ts_inputs()
    planted = [(0, 1), (1, 2), (2, 3)]
    inputs = {"mu": mu, "logb": logb}
    inputs[name] = _plant(inputs[name], planted)
    lam = torch.full((8,), 0.4)
    results = []
    for which in (backend, "reference"):
        leaves = [inputs["mu"].to(device).requires_grad_(), inputs["logb"].to(device).requires_grad_(),
                  lam.to(device).requires_grad_()]
        z, kl = seeded(3, which, *leaves, num_samples=2, base=base, return_kl=True,
                       prior_scale=0.5)
        (z.nan_to_num(0.0, 0.0, 0.0).sum() + kl.nan_to_num(0.0, 0.0, 0.0).sum()).backward()
        results.append((z.detach(), kl.detach()) + tuple(t.grad for t in leaves))
    z, kl = results[0][:2]
    for m, i in planted:
        # every sample of a non-finite input is non-finite: never the zero of the threshold
        assert not torch.isfinite(z[m, :, i]).any(), (name, m, i, z[m, :, i])
        assert not torch.isfinite(kl[m]), (name, m)
    finite = torch.ones_like(z[:, 0, :], dtype=torch.bool)
    for m, i in planted:
        finite[m, i] = False
    assert torch.isfinite(z[finite[:, None, :].expand_as(z)]).all()
    for got, want, what in zip(results[0], results[1], ("z", "kl", "grad mu", "grad logb",
                                                         "grad lam")):
        _same_finiteness(got, want, f"{what} ({name})")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_threshold_sample_overflowing_scale_gives_inf(backend):
    """logb = 100 overflows b = exp(logb) in float32: z is not finite there (+-inf from the
    kernels; NaN from the reference's straight-through arithmetic) -- no check, which
    would need a host read."""
    device = _device(backend)
    mu, logb = _ts_inputs()
    logb[1, 4] = 100.0
    z = seeded(1, backend, mu.to(device), logb.to(device), 0.3, num_samples=3)
    assert not torch.isfinite(z[1, :, 4]).any()
    if backend != "reference":
        assert torch.isinf(z[1, :, 4]).all()
    assert torch.isfinite(z[0]).all() and torch.isfinite(z[2]).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("bad", [-0.5, NAN, INF])
def test_threshold_sample_invalid_lam_tensor(backend, bad):
    """A negative, NaN or inf threshold: ValueError naming lam where reading it costs no
    host synchronisation (reference, C++); the Triton kernels (CUDA, no host read) write
    NaN where it applies instead."""
    device = _device(backend)
    mu, logb = _ts_inputs()
    lam = torch.full((8,), 0.3)
    lam[5] = bad
    args = (mu.to(device), logb.to(device), lam.to(device))
    if backend == "triton":
        z = seeded(0, backend, *args, num_samples=2)
        assert torch.isnan(z[:, :, 5]).all()
        lam_ok = lam.clone()
        lam_ok[5] = 0.3
        keep = [i for i in range(8) if i != 5]
        _same(z[:, :, keep], seeded(0, "reference", mu, logb, lam_ok, num_samples=2)[:, :, keep],
              "other columns")
    else:
        with pytest.raises(ValueError, match="lam"):
            seeded(0, backend, *args, num_samples=2)


# --------------------------------------------------------------------------------------
# linear_elbo and elbo_select
# --------------------------------------------------------------------------------------

def _linear_problem(B=3, J=2, d=6, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, J, d, generator=g)
    z[:, :, ::2] = 0.0                         # sparse codes: the C++ sparse path runs
    A = torch.randn(D, d, generator=g)
    x = torch.randn(B, D, generator=g)
    kl = torch.rand(B, J, generator=g)
    return {"x": x, "z": z, "A": A, "kl": kl}


_LINEAR_PLANTS = {   # (input, indices of NaN, +inf, -inf)
    "x": [(0, 1), (1, 0), (2, 3)],
    "z": [(0, 1, 1), (1, 0, 3), (2, 1, 5)],
    "A": [(1, 2), (3, 4), (0, 0)],             # columns 2, 4, 0 are zero in every code
    "kl": [(0, 1), (1, 0), (2, 1)],
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", list(_LINEAR_PLANTS))
@pytest.mark.parametrize("method", ["max", "avg"])
def test_linear_elbo_non_finite_inputs_propagate(backend, name, method):
    device = _device(backend)
    problem = _linear_problem()
    problem[name] = _plant(problem[name], _LINEAR_PLANTS[name])
    results = []
    for which in (backend, "reference"):
        leaves = {k: v.to(device).requires_grad_(k in ("z", "A")) for k, v in problem.items()}
        out = linear_elbo(leaves["x"], leaves["z"], leaves["A"], leaves["kl"], method=method,
                          backend=which)
        out.loss.backward()
        results.append((out.loss.detach(), out.per_sample, leaves["z"].grad, leaves["A"].grad))
    loss, per_sample = results[0][:2]
    assert not torch.isfinite(loss), name
    if name == "A":
        # a NaN or inf in A reaches every reconstruction, even through the codes' zeros
        assert not torch.isfinite(per_sample).any()
    for got, want, what in zip(results[0], results[1], ("loss", "per_sample", "grad z",
                                                         "grad A")):
        _same(got, want, f"{what} ({name}, {method})")


_ELBO_PLANTS = {
    "x": [(0, 1), (1, 0), (2, 3)],
    "x_hat": [(0, 1, 1), (1, 0, 3), (2, 1, 2)],
    "kl": [(0, 1), (1, 0), (2, 1)],
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", list(_ELBO_PLANTS))
@pytest.mark.parametrize("method", ["max", "iwae"])
def test_elbo_select_non_finite_inputs_propagate(backend, name, method):
    device = _device(backend)
    g = torch.Generator().manual_seed(1)
    problem = {"x": torch.randn(3, 5, generator=g), "x_hat": torch.randn(3, 2, 5, generator=g),
               "kl": torch.rand(3, 2, generator=g)}
    problem[name] = _plant(problem[name], _ELBO_PLANTS[name])
    results = []
    for which in (backend, "reference"):
        leaves = {k: v.to(device).requires_grad_(k == "x_hat") for k, v in problem.items()}
        if which == "reference":
            out = elbo_reference.elbo_select(
                leaves["x"], leaves["x_hat"], leaves["kl"], method=method)
        else:
            out = elbo_select(leaves["x"], leaves["x_hat"], leaves["kl"], method=method,
                              backend=which)
        out.loss.backward()
        results.append((out.loss.detach(), out.per_sample, out.index, leaves["x_hat"].grad))
    per_sample = results[0][1]
    for row in range(3):
        assert not torch.isfinite(per_sample[row]).all(), (name, row)
    for got, want, what in zip(results[0], results[1], ("loss", "per_sample", "index",
                                                         "grad x_hat")):
        _same(got, want, f"{what} ({name}, {method})")


# --------------------------------------------------------------------------------------
# fista and sparse_decode
# --------------------------------------------------------------------------------------

def _fista_problem(B=4, d=6, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, d, generator=g)
    A = A / A.norm(dim=0)
    x = torch.randn(B, D, generator=g)
    return x, A


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("name", ["x", "init"])
def test_fista_non_finite_rows_never_converge(backend, name):
    """A NaN or inf in x or init: that row's codes are NaN/inf and it is not converged
    (it runs to max_iter); the other rows are solved as usual."""
    device = _device(backend)
    x, A = _fista_problem()
    init = torch.zeros(4, 6)
    if name == "x":
        x = _plant(x, [(0, 1), (1, 2), (2, 0)])
    else:
        init = _plant(init, [(0, 1), (1, 2), (2, 0)])
    result = fista(x.to(device), A.to(device), 0.1, max_iter=100, tol=1e-3, init=init.to(device),
                   backend=backend)
    for row in range(3):
        assert not torch.isfinite(result.codes[row]).all(), (name, row)
        assert not bool(result.converged[row]) and int(result.n_iter[row]) == 100
    assert torch.isfinite(result.codes[3]).all() and bool(result.converged[3])
    ref = fista(x, A, 0.1, max_iter=100, tol=1e-3, init=init, backend="reference")
    assert torch.equal(result.converged.cpu(), ref.converged)
    assert torch.equal(torch.isnan(result.codes.cpu()), torch.isnan(ref.codes))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("bad", [NAN, INF])
def test_fista_non_finite_dictionary_is_an_error_naming_A(backend, bad):
    device = _device(backend)
    x, A = _fista_problem()
    A[2, 3] = bad
    with pytest.raises(ValueError, match="A contains NaN or inf"):
        fista(x.to(device), A.to(device), 0.1, max_iter=5, backend=backend)
    with pytest.raises(ValueError, match="A contains NaN or inf"):
        fista(x.to(device), A.to(device), 0.1, max_iter=5, lipschitz=2.0, backend=backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["z", "A"])
def test_sparse_decode_non_finite_inputs_propagate(backend, name):
    device = _device(backend)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, 8, generator=g)
    z[:, ::3] = 0.0
    A = torch.randn(5, 8, generator=g)
    if name == "z":
        z = _plant(z, [(0, 1), (1, 2), (2, 4)])
    else:
        A = _plant(A, [(0, 0), (1, 3), (2, 6)])   # columns that are zero in every code
    results = []
    for which, dense_above in ((backend, 1.0), ("reference", None)):
        zl, Al = z.to(device).requires_grad_(), A.to(device).requires_grad_()
        out = sparse_decode(zl, Al, dense_above=dense_above, backend=which)
        out.backward(torch.ones_like(out))
        results.append((out.detach(), zl.grad, Al.grad))
    out = results[0][0]
    if name == "z":
        assert not torch.isfinite(out[:3]).any() and torch.isfinite(out[3]).all()
    else:
        assert not torch.isfinite(out[:, :3]).any()
    for got, want, what in zip(results[0], results[1], ("out", "grad z", "grad A")):
        _same(got, want, f"{what} ({name})")
