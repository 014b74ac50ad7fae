"""linear_elbo: every backend against a materializing plain-autograd oracle (float64),
per dtype; gradients (also gradcheck in float64); ties; edge cases; strides; bad input;
torch.compile; and that the forward does not build the (B, J, D) reconstructions."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import vsc_kernels
from vsc_kernels import linear_elbo
from vsc_kernels.linear_elbo import reference

from _utils import require_backend

BACKENDS = ["reference", "cpp", "triton"]
KERNEL_BACKENDS = ["cpp", "triton"]
METHODS = ["max", "avg", "iwae", "softmin"]

# (dtype, rtol): both the kernels and the oracle see the same input values; the kernels
# compute in float32 and round once to the output dtype, so the error is float32
# accumulation (float32 rows) or one output rounding (float16/bfloat16). Gradients are
# compared with an absolute tolerance of rtol * max |oracle gradient|.
DTYPE_RTOL = [(torch.float32, 2e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]
# (recon, kl kind) combinations run for every backend, method and dtype.
VARIANTS = [("sum", None), ("mean", "row"), ("sum", "sample")]


def _device(backend):
    return torch.device("cpu") if backend == "reference" else require_backend(backend)


def _problem(B=7, J=5, d=19, D=37, kl_kind="sample", seed=0, dtype=torch.float32,
             zero_rows=(1,)):
    """Codes with ~70% exact zeros (as threshold_sample gives), some rows all zero; scaled
    so that the per-sample losses differ by O(1) (IWAE weights are not one-hot)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, d, generator=g) * (0.3 / max(d, 1) ** 0.5)
    x = 0.5 * torch.randn(B, D, generator=g)
    z = torch.randn(B, J, d, generator=g) * (torch.rand(B, J, d, generator=g) < 0.3)
    for b in zero_rows:
        if b < B:
            z[b] = 0.0
    kl = {None: None, "row": torch.rand(B, generator=g),
          "sample": torch.rand(B, J, generator=g)}[kl_kind]
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(x), cast(z), cast(A), cast(kl)


def _oracle(x, z, A, kl, beta, method, recon):
    """Plain autograd in float64 with the (B, J, D) reconstructions; returns the outputs
    and the gradients of loss with respect to x, z, A (and kl)."""
    leaves = [t.detach().double().requires_grad_() for t in (x, z, A)]
    kl64 = None if kl is None else kl.detach().double().requires_grad_()
    x64, z64, A64 = leaves
    E = ((x64[:, None, :] - z64 @ A64.T) ** 2).sum(-1)
    L = E * (1.0 if recon == "sum" else 1.0 / max(x.shape[1], 1))
    if kl64 is not None:
        L = L + beta * (kl64[:, None] if kl64.dim() == 1 else kl64)
    J = L.shape[1]
    index = L.argmin(dim=1)           # the first minimal index
    if method == "max":
        rows = L.min(dim=1).values
        weights = torch.nn.functional.one_hot(index, J).double()
    elif method == "avg":
        rows = L.mean(dim=1)
        weights = torch.full_like(L, 1.0 / J)
    elif method == "iwae":
        rows = -torch.log(torch.exp(-L).mean(dim=1))
        weights = torch.softmax(-L, dim=1)
    else:   # softmin, the public code's "iwae": sum_j w_j L_j, w = softmax(-L) not detached
        rows = (torch.softmax(-L, dim=1) * L).sum(dim=1)
        weights = (torch.autograd.grad(rows.sum(), L, retain_graph=True)[0]
                   if rows.numel() else torch.zeros_like(L))
    loss = rows.mean() if rows.numel() else L.sum() * 0.0
    grads = torch.autograd.grad(loss, leaves + ([kl64] if kl64 is not None else []),
                                allow_unused=True)
    return loss.detach(), L.detach(), index, weights.detach(), grads


def _assert_close(actual, expected, rtol, name):
    expected = expected.double()
    scale = max(expected.abs().max().item(), 1e-30) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().cpu().double(), expected, rtol=rtol,
                               atol=rtol * scale, msg=lambda m: f"{name}: {m}")


def _run(backend, device, x, z, A, kl, beta, method, recon, **kwargs):
    leaves = [t.detach().to(device, copy=True).requires_grad_() for t in (x, z, A)]
    kl_leaf = None if kl is None else kl.detach().to(device, copy=True).requires_grad_()
    result = linear_elbo(*leaves, kl_leaf, beta=beta, method=method, recon=recon,
                         backend=backend, **kwargs)
    result.loss.backward()
    grads = [t.grad for t in leaves] + ([kl_leaf.grad] if kl_leaf is not None else [])
    return result, grads


@pytest.mark.parametrize("dtype,rtol", DTYPE_RTOL)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_materializing_oracle(backend, method, dtype, rtol):
    device = _device(backend)
    for seed, (recon, kl_kind) in enumerate(VARIANTS):
        x, z, A, kl = _problem(kl_kind=kl_kind, seed=seed, dtype=dtype)
        beta = 0.7
        result, grads = _run(backend, device, x, z, A, kl, beta, method, recon)
        loss, L, index, weights, ref_grads = _oracle(x, z, A, kl, beta, method, recon)
        assert result.loss.dtype == dtype and result.per_sample.dtype == dtype
        assert result.weights.dtype == dtype and result.index.dtype == torch.long
        assert result.loss.shape == () and result.per_sample.shape == L.shape
        assert torch.equal(result.index.cpu(), index)
        _assert_close(result.loss, loss, rtol, "loss")
        _assert_close(result.per_sample, L, rtol, "per_sample")
        _assert_close(result.weights, weights, rtol, "weights")
        for name, grad, ref in zip(("x", "z", "A", "kl"), grads, ref_grads):
            assert grad.dtype == dtype, name
            _assert_close(grad, ref, 4 * rtol, f"grad {name}")
        if method == "max":   # only the selected sample of each row gets a gradient
            unselected = torch.ones_like(L, dtype=torch.bool).scatter_(1, index[:, None], False)
            assert (grads[1].cpu()[unselected] == 0).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_all_zero_code_rows_give_the_data_norm(backend):
    device = _device(backend)
    x, z, A, _ = _problem(zero_rows=(0, 3, 6))
    result = linear_elbo(x.to(device), z.to(device), A.to(device), backend=backend)
    norms = (x.double() ** 2).sum(dim=1)
    for b in (0, 3, 6):
        torch.testing.assert_close(result.per_sample[b].cpu().double(),
                                   norms[b].expand(z.shape[1]), rtol=1e-6, atol=0)
        assert result.index[b] == 0   # all samples tie: the lowest index


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_resolve_to_the_lowest_index(backend):
    """Integer data: every sum is exact in float32 whatever the summation order, so
    duplicated samples tie exactly in every backend."""
    device = _device(backend)
    g = torch.Generator().manual_seed(5)
    B, J, d, D = 6, 5, 8, 13
    A = torch.randint(-2, 3, (D, d), generator=g).float()
    z = torch.randint(-1, 2, (B, J, d), generator=g).float()
    z[:, 3] = z[:, 1]                       # samples 1 and 3 are the same ...
    x = (z[:, 1] @ A.T).clone()             # ... and reconstruct x exactly (E = 0)
    x[0] += 1.0                             # row 0: not exact, still a tie of 1 and 3
    z[2] = z[2, 4]                          # row 2: all samples the same
    kl = torch.randint(0, 3, (B,), generator=g).float()
    _, L, ref_index, _, _ = _oracle(x, z, A, kl, 1.0, "max", "sum")
    for method in METHODS:
        result, grads = _run(backend, device, x, z, A, kl, 1.0, method, "sum")
        assert torch.equal(result.index.cpu(), ref_index)
    expected = torch.tensor([1, 1, 0, 1, 1, 1])
    assert torch.equal(ref_index, expected) and torch.equal(result.index.cpu(), expected)
    result, grads = _run(backend, device, x, z, A, kl, 1.0, "max", "sum")
    assert result.weights[0, 1] == 1 and result.weights[0, 3] == 0
    assert (grads[1][0, 1] != 0).any() and (grads[1][:, 3] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_sample_all_methods_agree(backend):
    device = _device(backend)
    x, z, A, kl = _problem(J=1, kl_kind="row")
    results = {m: _run(backend, device, x, z, A, kl, 0.5, m, "sum") for m in METHODS}
    for method in ("avg", "iwae", "softmin"):
        torch.testing.assert_close(results[method][0].loss, results["max"][0].loss,
                                   rtol=1e-6, atol=1e-6)
        for grad, ref in zip(results[method][1], results["max"][1]):
            torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)
    assert (results["max"][0].index == 0).all()
    assert (results["iwae"][0].weights == 1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    device = _device(backend)
    x, z, A, kl = _problem(B=0, kl_kind="sample")
    for method in METHODS:
        result, grads = _run(backend, device, x, z, A, kl, 1.0, method, "mean")
        assert result.loss.item() == 0.0
        assert result.per_sample.shape == (0, 5) and result.index.shape == (0,)
        assert result.weights.shape == (0, 5)
        assert [tuple(g.shape) for g in grads] == [(0, 37), (0, 5, 19), (37, 19), (0, 5)]
        assert (grads[2] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d,D", [(0, 6), (4, 0)])
def test_degenerate_dimensions(backend, d, D):
    """No code features (A z = 0: E is ||x_b||^2) or no data features (E = 0)."""
    device = _device(backend)
    x, z, A, kl = _problem(B=3, J=2, d=d, D=D, kl_kind="row")
    for method in METHODS:
        result, grads = _run(backend, device, x, z, A, kl, 1.0, method, "mean")
        loss, L, index, _, ref_grads = _oracle(x, z, A, kl, 1.0, method, "mean")
        _assert_close(result.per_sample, L, 1e-6, "per_sample")
        assert torch.equal(result.index.cpu(), index)
        for name, grad, ref in zip("xzAk", grads, ref_grads):
            assert grad.shape == ref.shape, name
            _assert_close(grad, ref, 1e-5, name)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous_inputs(backend):
    device = _device(backend)
    x, z, A, kl = _problem(kl_kind="sample")
    B, J, d = z.shape
    D = x.shape[1]
    # The same values behind other strides: z with the sample axis innermost, A stored
    # transposed, x every other column of a wider matrix.
    z_nc = z.permute(0, 2, 1).contiguous().permute(0, 2, 1)
    A_nc = A.T.contiguous().T
    x_nc = torch.zeros(B, 2 * D).index_copy_(1, torch.arange(0, 2 * D, 2), x)[:, ::2]
    assert not (z_nc.is_contiguous() or A_nc.is_contiguous() or x_nc.is_contiguous())
    for method in ("max", "avg"):
        ours, ours_grads = _run(backend, device, x_nc, z_nc, A_nc, kl, 1.0, method, "sum")
        ref, ref_grads = _run(backend, device, x, z, A, kl, 1.0, method, "sum")
        torch.testing.assert_close(ours.per_sample, ref.per_sample, rtol=1e-5, atol=1e-5)
        for grad, expected in zip(ours_grads, ref_grads):
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_mixed_dtypes_promote(backend):
    """bf16 codes with float32 data and dictionary (autocast-style inputs): the math runs
    on the promoted float32 values, each gradient comes back in its input's dtype."""
    device = _device(backend)
    x, z, A, kl = _problem(kl_kind="row")
    z16 = z.to(torch.bfloat16)
    result, grads = _run(backend, device, x, z16, A, kl, 1.0, "avg", "sum")
    ref, ref_grads = _run("reference", torch.device("cpu"), x, z16.float(), A, kl, 1.0, "avg",
                          "sum")
    assert result.loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.float32, torch.bfloat16, torch.float32,
                                        torch.float32]
    torch.testing.assert_close(result.loss.cpu(), ref.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[2].cpu(), ref_grads[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_keeps_float32_math(backend):
    """Float32 inputs in a bfloat16 autocast region: the products stay float32 (autocast
    would otherwise run them in bfloat16), in the forward and, for the kernel backends'
    own backward, also when backward() is called inside the region (the reference
    backend's plain-autograd backward follows autocast there, as PyTorch's does)."""
    device = _device(backend)
    x, z, A, kl = _problem(kl_kind="row")
    plain, plain_grads = _run(backend, device, x, z, A, kl, 1.0, "avg", "sum")
    leaves = [t.to(device, copy=True).requires_grad_() for t in (x, z, A)]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        cast = linear_elbo(*leaves, kl.to(device), method="avg", backend=backend)
    cast.loss.backward()
    cast_grads = [t.grad for t in leaves]
    if backend != "reference":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            inside, inside_grads = _run(backend, device, x, z, A, kl, 1.0, "avg", "sum")
        cast_grads += inside_grads[:3]
        plain_grads = plain_grads[:3] * 2
    assert cast.loss.dtype == torch.float32
    torch.testing.assert_close(cast.loss, plain.loss, rtol=1e-6, atol=1e-6)
    for grad, expected in zip(cast_grads, plain_grads):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_float64(backend, method):
    device = _device(backend)
    x, z, A, kl = _problem(B=2, J=3, d=3, D=4, kl_kind="sample", seed=2, dtype=torch.float64,
                           zero_rows=())
    inputs = [t.to(device, copy=True).requires_grad_() for t in (x, z, A, kl)]

    def loss(x, z, A, kl):
        return linear_elbo(x, z, A, kl, beta=0.3, method=method, recon="mean",
                           backend=backend).loss

    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_backward_contract_in_chunks(monkeypatch):
    """The shared backward: blocks of rows (one with a remainder), blocks of samples of a
    row, one sample at a time and one block all give the autograd gradients; with an
    index only the selected residuals are used."""
    x, z, A, _ = _problem(B=7, J=3, d=6, D=10, dtype=torch.float64)
    grad_E = torch.rand(7, 3, dtype=torch.float64)
    whole = reference.linear_elbo_backward(grad_E, None, x, z, A, True, True, True)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 2 * 3 * 10 + 5)   # 2 rows a block
    chunked = reference.linear_elbo_backward(grad_E, None, x, z, A, True, True, True)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 2 * 10 + 3)       # 2 samples of a row
    samples = reference.linear_elbo_backward(grad_E, None, x, z, A, True, True, True)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 7)                # 1 sample (D > 7)
    single = reference.linear_elbo_backward(grad_E, None, x, z, A, True, True, True)
    for a, b, c, e in zip(whole, chunked, samples, single):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(a, e)
    leaves = [t.clone().requires_grad_() for t in (x, z, A)]
    ((leaves[0][:, None] - leaves[1] @ leaves[2].T) ** 2).sum(-1).mul(grad_E).sum().backward()
    for ours, ref in zip(whole, leaves):
        torch.testing.assert_close(ours, ref.grad)
    index = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    one_hot = torch.zeros_like(grad_E).scatter_(1, index[:, None], grad_E.gather(1, index[:, None]))
    selected = reference.linear_elbo_backward(one_hot, index, x, z, A, True, True, True)
    dense = reference.linear_elbo_backward(one_hot, None, x, z, A, True, True, True)
    for a, b in zip(selected, dense):
        torch.testing.assert_close(a, b)
    assert reference.linear_elbo_backward(one_hot, index, x, z, A, False, True, False)[0::2] \
        == (None, None)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_forward_contract_several_tiles(backend):
    """Shapes spanning several row blocks, column tiles and d slices (forced small tiles
    and a column split for Triton; several row blocks per thread for C++)."""
    device = _device(backend)
    x, z, A, _ = _problem(B=41, J=3, d=70, D=150, seed=9)
    impl = vsc_kernels._dispatch.backend_module("linear_elbo", backend)
    expected = reference.squared_error(x.double(), z.double(), A.double())
    args = [t.to(device) for t in (x, z, A)]
    configs = [{}]
    if backend == "triton":
        configs.append(dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, n_split=3))
        if device.type == "cuda":
            configs.append(dict(DOT_PRECISION="tf32x3"))
    for config in configs:
        E = impl.squared_error(*args, _config=config) if config else impl.squared_error(*args)
        assert E.dtype == torch.float32 and E.shape == (41, 3)
        torch.testing.assert_close(E.cpu().double(), expected, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("density", [0.3, 1.0])   # the C++ sparse and dense residual paths
def test_cpp_backward_contract_in_chunks(monkeypatch, density):
    """The C++ backward (one call: residuals from the sparse-aware kernel, grad_A over the
    codes' non-zeros when sparse, a plain-loop path for small problems) gives the
    reference's gradients for every blocking, with and without an index."""
    require_backend("cpp")
    from vsc_kernels.linear_elbo import cpp_backend

    g = torch.Generator().manual_seed(4)
    B, J, d, D = 9, 4, 40, 30
    x = torch.randn(B, D, generator=g)
    z = torch.randn(B, J, d, generator=g) * (torch.rand(B, J, d, generator=g) < density)
    A = torch.randn(D, d, generator=g) / d ** 0.5
    grad_E = torch.rand(B, J, generator=g)
    index = torch.randint(0, J, (B,), generator=g)
    for chunk in (reference.CHUNK_ELEMENTS, 2 * J * D + 5, 2 * D + 3, 7):
        monkeypatch.setattr(reference, "CHUNK_ELEMENTS", chunk)
        for idx in (None, index):
            want = reference.linear_elbo_backward(grad_E, idx, x, z, A, True, True, True)
            got = cpp_backend.linear_elbo_backward(grad_E, idx, x, z, A, True, True, True)
            for a, b, name in zip(got, want, ("x", "z", "A")):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4,
                                           msg=f"grad {name}, chunk {chunk}, index {idx}")
    # the small-problem path (one block holds everything)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 1 << 22)
    xs, zs, As, gs = x[:2, :6], z[:2, :, :5].contiguous(), A[:6, :5], grad_E[:2]
    for idx in (None, index[:2]):
        want = reference.linear_elbo_backward(gs, idx, xs, zs, As, True, True, True)
        got = cpp_backend.linear_elbo_backward(gs, idx, xs, zs, As, True, True, True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["max", "avg"])
def test_cpp_sparse_codes_against_a_large_dictionary(method):
    """A^T larger than the L2 cache (here 1.7 MB): the C++ kernel takes blocks of 256
    sample rows (here two and a part), collects their non-zeros once and sums them per
    tile of 64 columns (the last one ragged) in registers; the results and gradients are
    the reference's."""
    require_backend("cpp")
    g = torch.Generator().manual_seed(0)
    B, J, d, D = 200, 3, 700, 600
    z = torch.randn(B, J, d, generator=g) * (torch.rand(B, J, d, generator=g) < 0.1)
    A = torch.randn(D, d, generator=g) / d ** 0.5
    x = torch.randn(B, D, generator=g)
    grads = []
    for backend in ("cpp", "reference"):
        leaves = [z.clone().requires_grad_(), A.clone().requires_grad_()]
        out = linear_elbo(x, *leaves, method=method, backend=backend)
        out.loss.backward()
        grads.append((out.per_sample,) + tuple(t.grad for t in leaves))
    for got, want, name in zip(*grads, ("per_sample", "grad z", "grad A")):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)


class _LargestTensor(TorchDispatchMode):
    """Records the largest floating-point tensor any ATen op creates while active (the
    Triton interpreter's byte copies of argument storages, uint8, are not data)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_op_creates_the_reconstructions(backend, monkeypatch):
    """Forward and backward (max and avg) create no tensor as large as the (B, J, D)
    reconstructions, only blocks of CHUNK_ELEMENTS (set to one row's J * D here); the
    reference, which builds them, shows that the check can fail. (Allocations inside
    the C++ threads are not seen here; the next test measures those. The C++ forward's
    dense products run in blocks of CHUNK_ELEMENTS through ATen, so they are seen.)"""
    device = _device(backend)
    B, J, d, D = 3, 16, 8, 512
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", J * D)
    x, z, A, kl = [t.to(device) for t in _problem(B=B, J=J, d=d, D=D, kl_kind="row")]
    for method in ("max", "avg"):
        leaves = [t.clone().requires_grad_() for t in (x, z, A)]
        with _LargestTensor() as mode:
            linear_elbo(*leaves, kl, method=method, backend=backend).loss.backward()
        if backend == "reference":
            assert mode.largest >= B * J * D
        elif method == "max" and backend != "cpp":
            assert mode.largest < J * D, mode.largest
        elif method == "max":
            assert mode.largest <= J * D, mode.largest
        else:   # the backward's blocks are seen: exactly one row's residuals
            assert mode.largest == J * D, mode.largest


def test_cpp_peak_memory_stays_below_the_reconstructions():
    """In a fresh process, the peak resident memory grows by far less than the (B, J, D)
    float32 reconstructions (128 MiB here) for the C++ forward and backward -- the forward
    holds one block of at most CHUNK_ELEMENTS floats (16 MiB) for its dense products, the
    backward of avg one more for the residuals, reused across its blocks -- and by more
    than that for the reference, which builds them (so that the test can fail). A tiny
    forward and backward of each method runs first, so that one-time costs are not
    counted.

    The peak is the child's own (VmHWM, reset before each call through
    /proc/self/clear_refs), not ru_maxrss: Linux carries the parent's resident size at
    fork across exec into the child's ru_maxrss, so under a pytest process of a GiB or
    more (the full suite) ru_maxrss never moved and the test skipped."""
    require_backend("cpp")
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    script = textwrap.dedent("""
        import torch
        import vsc_kernels
        B, J, d, D = 2, 256, 4, 1 << 16
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, D, generator=g)
        z = torch.randn(B, J, d, generator=g).requires_grad_()
        A = torch.randn(D, d, generator=g).requires_grad_()
        for method in ("max", "avg"):
            vsc_kernels.linear_elbo(x[:1, :64], z[:1].detach().requires_grad_(),
                                    A[:64].detach().requires_grad_(), method=method,
                                    backend="cpp").loss.backward()
        def status(key):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f
                            if line.startswith(key + ":"))
        for backend in ("cpp", "reference"):
            for method in ("max", "avg"):
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # VmHWM := VmRSS
                before = status("VmRSS")
                vsc_kernels.linear_elbo(x, z, A, method=method,
                                        backend=backend).loss.backward()
                print(backend, method, (status("VmHWM") - before) / 2**20)
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(vsc_kernels.__file__).parent.parent))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    growth = {(name, method): float(mb)
              for name, method, mb in (line.split() for line in out.splitlines())}
    # The measurement sees the reference's 128 MiB of reconstructions.
    assert min(growth["reference", "max"], growth["reference", "avg"]) > 120, out
    assert growth["cpp", "max"] < 24, out
    assert growth["cpp", "avg"] < 40, out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["max", "avg"])
def test_torch_compile_fullgraph(backend, method):
    device = _device(backend)
    x, z, A, kl = _problem(kl_kind="row")

    def step(x, z, A, kl):
        result = linear_elbo(x, z, A, kl, beta=0.5, method=method, recon="mean",
                             backend=backend)
        return result.loss, result.per_sample, result.index

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_leaves = [t.to(device, copy=True).requires_grad_() for t in (x, z, A, kl)]
    comp_leaves = [t.to(device, copy=True).requires_grad_() for t in (x, z, A, kl)]
    eager = step(*eager_leaves)
    ours = compiled(*comp_leaves)
    eager[0].backward()
    ours[0].backward()
    torch.testing.assert_close(ours[0], eager[0])
    torch.testing.assert_close(ours[1], eager[1])
    assert torch.equal(ours[2], eager[2])
    for a, b in zip(comp_leaves, eager_leaves):
        torch.testing.assert_close(a.grad, b.grad)


def test_only_loss_is_differentiable():
    for backend in BACKENDS:
        device = require_backend(backend) if backend != "reference" else torch.device("cpu")
        x, z, A, kl = (t.to(device) for t in _problem(kl_kind="row"))
        leaves = [t.requires_grad_() for t in (x, z, A)]
        result = linear_elbo(*leaves, kl, backend=backend)
        assert result.loss.requires_grad
        assert not result.per_sample.requires_grad and not result.weights.requires_grad


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.randn(3, 4, 5)), ValueError, r"x must be a \(B, D\) matrix"),
    (dict(z=torch.randn(3, 6)), ValueError, r"z must be \(B, J, d\) codes"),
    (dict(A=torch.randn(4)), ValueError, r"A must be a \(D, d\) dictionary"),
    (dict(A=torch.randn(5, 6)), ValueError, r"A must have D = x.shape\[1\] = 4 rows"),
    (dict(z=torch.randn(3, 2, 7)), ValueError, r"z must have d = A.shape\[1\] = 6"),
    (dict(z=torch.randn(2, 2, 6)), ValueError, r"z must have B = x.shape\[0\] = 3 rows"),
    (dict(z=torch.randn(3, 0, 6)), ValueError, r"J >= 1"),
    (dict(x=torch.ones(3, 4, dtype=torch.long)), TypeError, r"x must have a floating-point"),
    (dict(A=[[1.0]]), TypeError, r"A must be a torch.Tensor"),
    (dict(kl=torch.randn(3, 3)), ValueError, r"kl must have shape \(3,\) or \(3, 2\)"),
    (dict(kl=torch.ones(3, dtype=torch.int32)), TypeError, r"kl must have a floating-point"),
    (dict(beta=-1.0), ValueError, r"beta must be >= 0"),
    (dict(beta="1"), TypeError, r"beta must be a real number"),
    (dict(method="min"), ValueError, r"method must be one of \('max', 'avg', 'iwae', 'softmin'\)"),
    (dict(recon="l2"), ValueError, r"recon must be one of \('sum', 'mean'\)"),
    (dict(backend="cuda"), ValueError, r"backend must be one of"),
])
def test_bad_input(kwargs, error, match):
    args = dict(x=torch.randn(3, 4), z=torch.randn(3, 2, 6), A=torch.randn(4, 6), kl=None)
    args.update(kwargs)
    options = {k: args.pop(k) for k in ("beta", "method", "recon", "backend") if k in args}
    with pytest.raises(error, match=match):
        linear_elbo(args["x"], args["z"], args["A"], args["kl"], **options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_device_mismatch():
    with pytest.raises(ValueError, match="z is on cpu but x is on cuda"):
        linear_elbo(torch.randn(3, 4, device="cuda"), torch.randn(3, 2, 6), torch.randn(4, 6))
