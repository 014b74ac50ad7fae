"""Batched FISTA: optimality against scikit-learn's Lasso, KKT conditions, recovery,
backend agreement, warm starts, per-row lambda, edge cases and bad input."""

import numpy as np
import pytest
import torch

import vsc_kernels
from vsc_kernels.fista import fista, reference

from _utils import require_backend

BACKENDS = ["reference", "cpp", "triton"]
KERNEL_BACKENDS = ["cpp", "triton"]


def _device(backend):
    return torch.device("cpu") if backend == "reference" else require_backend(backend)


def _problem(B=12, D=64, d=48, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, d, generator=g, dtype=dtype)
    A = A / A.norm(dim=0)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    return x, A


def _whitened_patches(count=16, size=8):
    """8x8 patches of skimage's camera image, PCA-whitened (a test of the solver on
    natural-image statistics, not the training data pipeline)."""
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.tensor(skimage_data.camera(), dtype=torch.float64) / 255.0
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, image.shape[0] - size, (4000,), generator=g)
    cols = torch.randint(0, image.shape[1] - size, (4000,), generator=g)
    patches = torch.stack([image[r:r + size, c:c + size].reshape(-1)
                           for r, c in zip(rows.tolist(), cols.tolist())])
    patches = patches - patches.mean(dim=1, keepdim=True)
    cov = patches.T @ patches / len(patches)
    evals, evecs = torch.linalg.eigh(cov)
    whitening = evecs @ torch.diag((evals + 1e-4) ** -0.5) @ evecs.T
    white = patches @ whitening
    return white[:count] / white[:count].std()


def _sklearn_objective(x, A, lam):
    from sklearn.linear_model import Lasso

    D = A.shape[0]
    values = []
    for row in x:
        # sklearn minimizes (1 / (2 n)) ||y - X w||^2 + alpha ||w||_1 with n = D samples:
        # alpha = lam / D is the same problem as 0.5 ||x - A z||^2 + lam ||z||_1.
        model = Lasso(alpha=lam / D, fit_intercept=False, tol=1e-12, max_iter=200_000)
        model.fit(A.numpy(), row.numpy())
        codes = torch.tensor(model.coef_, dtype=x.dtype)[None]
        values.append(reference.objective(row[None], A, codes, lam))
    return torch.cat(values)


def _kkt_violation(x, A, codes, lam):
    """Optimality of the lasso: A^T (x - A z) = lam sign(z) on the support, |.| <= lam off it."""
    correlation = (x - codes @ A.T) @ A
    on = codes != 0
    lam = torch.as_tensor(lam, dtype=x.dtype).expand(x.shape[0])[:, None].expand_as(codes)
    on_err = (correlation - lam * torch.sign(codes)).abs()[on]
    off_err = (correlation.abs() - lam).clamp(min=0)[~on]
    return max(on_err.max().item() if on_err.numel() else 0.0,
               off_err.max().item() if off_err.numel() else 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("source", ["random", "patches"])
def test_matches_sklearn_lasso_and_kkt(backend, source):
    device = _device(backend)
    if source == "random":
        x, A = _problem()
    else:
        x = _whitened_patches()
        A = _problem(D=64, d=64, seed=4)[1]
    lam = 0.2
    dtype = torch.float32 if backend == "triton" else torch.float64
    result = fista(x.to(device, dtype), A.to(device, dtype), lam, max_iter=5000, tol=1e-9,
                   backend=backend)
    codes = result.codes.cpu().double()
    ours = reference.objective(x, A, codes, lam)
    theirs = _sklearn_objective(x, A, lam)
    assert ((ours - theirs) / theirs).abs().max() < 1e-4
    assert _kkt_violation(x, A, codes, lam) < (1e-3 if dtype == torch.float32 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpp_overcomplete_products_with_A(dtype):
    """d > 2 D: the C++ solver multiplies by A^T and A each iteration instead of the Gram
    matrix (and gets L from A A^T); only rounding differs from the reference's iterates."""
    require_backend("cpp")
    x, A = _problem(B=9, D=10, d=48, seed=3)
    lam = 0.05
    ours = fista(x.to(dtype), A.to(dtype), lam, max_iter=300, tol=1e-6, backend="cpp")
    ref = fista(x.to(dtype), A.to(dtype), lam, max_iter=300, tol=1e-6, backend="reference")
    atol = 1e-9 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(ours.codes, ref.codes, atol=atol, rtol=0)
    objective = reference.objective(x, A, ours.codes.double(), lam)
    expected = reference.objective(x, A, ref.codes.double(), lam)
    assert ((objective - expected) / expected).abs().max() < (1e-5 if dtype == torch.float32
                                                               else 1e-10)
    if dtype == torch.float64:
        assert torch.equal(ours.n_iter, ref.n_iter)
        assert torch.equal(ours.converged, ref.converged)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recovers_sparse_codes(backend):
    device = _device(backend)
    g = torch.Generator().manual_seed(7)
    D, d, B, k = 64, 48, 10, 4
    A = torch.randn(D, d, generator=g, dtype=torch.float64)
    A = A / A.norm(dim=0)
    truth = torch.zeros(B, d, dtype=torch.float64)
    for b in range(B):
        support = torch.randperm(d, generator=g)[:k]
        truth[b, support] = (torch.rand(k, generator=g, dtype=torch.float64) + 1) * \
            torch.where(torch.rand(k, generator=g) > 0.5, 1.0, -1.0).double()
    x = truth @ A.T
    result = fista(x.to(device, torch.float32), A.to(device, torch.float32), 1e-3,
                   max_iter=3000, tol=1e-7, backend=backend)
    codes = result.codes.cpu().double()
    assert torch.equal(codes.abs() > 0.1, truth != 0)
    assert (codes - truth).abs().max() < 0.02


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("nonneg", [False, True])
def test_backend_matches_reference(backend, nonneg):
    device = require_backend(backend)
    x, A = _problem(B=37, D=32, d=50, seed=11, dtype=torch.float32)
    lam = torch.linspace(0.05, 0.5, 37)
    kwargs = dict(max_iter=300, tol=1e-4, nonneg=nonneg)
    ours = fista(x.to(device), A.to(device), lam.to(device), backend=backend, **kwargs)
    ref = fista(x, A, lam, backend="reference", **kwargs)
    torch.testing.assert_close(ours.codes.cpu(), ref.codes, atol=1e-4, rtol=1e-3)
    # Iteration counts agree up to a row whose stopping test sits on the boundary.
    assert (ours.n_iter.cpu() - ref.n_iter).abs().max() <= 1
    assert (ours.converged.cpu() != ref.converged).sum() <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_lambda_equals_separate_solves(backend):
    device = _device(backend)
    x, A = _problem(B=6, dtype=torch.float32)
    lams = torch.tensor([0.02, 0.05, 0.1, 0.3, 1.0, 100.0])
    together = fista(x.to(device), A.to(device), lams.to(device), max_iter=400, tol=1e-6,
                     backend=backend).codes.cpu()
    for b, lam in enumerate(lams.tolist()):
        alone = fista(x[b:b + 1].to(device), A.to(device), lam, max_iter=400, tol=1e-6,
                      backend=backend).codes.cpu()
        torch.testing.assert_close(together[b:b + 1], alone, atol=1e-5, rtol=1e-4)
    assert (together[-1] == 0).all()  # lam above ||A^T x||_inf: the zero code is optimal


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_start_converges_in_fewer_iterations(backend):
    device = _device(backend)
    x, A = _problem(B=8, dtype=torch.float32)
    x, A = x.to(device), A.to(device)
    cold = fista(x, A, 0.1, max_iter=2000, tol=1e-5, backend=backend)
    nudged = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    warm = fista(nudged, A, 0.1, max_iter=2000, tol=1e-5, init=cold.codes, backend=backend)
    fresh = fista(nudged, A, 0.1, max_iter=2000, tol=1e-5, backend=backend)
    assert warm.converged.all() and fresh.converged.all()
    assert warm.n_iter.sum() < fresh.n_iter.sum() * 0.7


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonneg_and_edge_sizes(backend):
    device = _device(backend)
    x, A = _problem(B=5, dtype=torch.float32)
    x, A = x.to(device), A.to(device)
    codes = fista(x, A, 0.05, nonneg=True, max_iter=300, backend=backend).codes
    assert (codes >= 0).all() and (codes > 0).any()
    one = fista(x[:1], A, 0.05, max_iter=50, backend=backend)
    assert one.codes.shape == (1, A.shape[1]) and one.n_iter.shape == (1,)
    none = fista(x[:0], A, 0.05, max_iter=50, backend=backend)
    assert none.codes.shape == (0, A.shape[1]) and none.n_iter.shape == (0,)
    capped = fista(x, A, 0.05, max_iter=3, tol=0.0, backend=backend)
    assert (capped.n_iter == 3).all() and not capped.converged.any()


def test_result_carries_no_graph_and_keeps_dtype():
    x, A = _problem(B=3, dtype=torch.float32)
    A.requires_grad_()
    result = fista(x.bfloat16(), A, 0.1, max_iter=20, backend="reference")
    assert result.codes.dtype == torch.float32  # promoted with A's dtype
    assert not result.codes.requires_grad
    assert result.n_iter.dtype == torch.int32 and result.converged.dtype == torch.bool


def test_power_iteration_is_the_spectral_norm():
    x, A = _problem(D=30, d=20)
    L = reference.power_iteration(A.T @ A)
    assert abs(L.item() - torch.linalg.matrix_norm(A, ord=2).item() ** 2) < 1e-5 * L.item()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.zeros(3, 5)), ValueError, "A must have D = x.shape"),
    (dict(x=torch.zeros(3, 4, 1)), ValueError, r"x must be a \(B, D\) matrix"),
    (dict(A=torch.zeros(4)), ValueError, r"A must be a \(D, d\) dictionary"),
    (dict(x=torch.zeros(3, 4, dtype=torch.int64)), TypeError, "x must have a floating"),
    (dict(lam=-1.0), ValueError, "lam must be >= 0"),
    (dict(lam=torch.ones(4)), ValueError, r"lam must be a float or a per-row tensor of shape \(3,\)"),
    (dict(lam=-torch.ones(3)), ValueError, "lam must be >= 0 everywhere"),
    (dict(max_iter=0), ValueError, "max_iter must be >= 1"),
    (dict(max_iter=None), TypeError, "max_iter must be an int"),
    (dict(tol=-1e-3), ValueError, "tol must be >= 0"),
    (dict(init=torch.zeros(3, 5)), ValueError, r"init must have shape \(3, 6\)"),
    (dict(lipschitz=0.0), ValueError, "lipschitz must be > 0"),
    (dict(nonneg="yes"), TypeError, "nonneg must be a bool"),
    (dict(A=torch.zeros(4, 6, device="meta")), ValueError, "A is on meta but x is on cpu"),
])
def test_bad_input(kwargs, error, match):
    args = dict(x=torch.zeros(3, 4), A=torch.zeros(4, 6), lam=0.1)
    args.update(kwargs)
    x, A, lam = args.pop("x"), args.pop("A"), args.pop("lam")
    with pytest.raises(error, match=match):
        fista(x, A, lam, backend="reference", **args)


def test_exported():
    assert vsc_kernels.fista is fista
