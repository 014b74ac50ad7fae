"""elbo_select: every backend against the materializing plain-autograd reference (outputs
and the gradients of x_hat, x and kl, per dtype), the reference against the paper's
formulas, float64 gradchecks, ties, edge shapes, strided inputs, bad input,
torch.compile and a bf16 training step."""

import math

import pytest
import torch

import vsc_kernels
from vsc_kernels.elbo_select import reference

from _utils import DTYPE_TOLERANCES, KERNEL_BACKENDS, num_threads, require_backend

BACKENDS = ["reference", "cpp", "triton"]
METHODS = ["max", "avg", "iwae", "softmin"]
KL_KINDS = [None, "row", "sample"]

SHAPES = [  # (B, J, trailing shape of x)
    (5, 3, (37,)),
    (1, 1, (5,)),
    (37, 4, (341,)),
    (3, 2, (3, 5, 7)),     # image-like (C, H, W)
    (4, 3, ()),            # one feature per row: x is (B,)
]


def _device(backend):
    return torch.device("cpu") if backend == "reference" else require_backend(backend)


def _problem(B, J, trailing, dtype, device, kl_kind=None, seed=0, noise=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *trailing, generator=g)
    x_hat = x[:, None] + noise * torch.randn(B, J, *trailing, generator=g)
    kl = None
    if kl_kind == "row":
        kl = torch.rand(B, generator=g) * 3
    elif kl_kind == "sample":
        kl = torch.rand(B, J, generator=g) * 3
    cast = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
    return cast(x), cast(x_hat), cast(kl)


def _run(fn, x, x_hat, kl, **kwargs):
    """Outputs and the gradients of (x, x_hat, kl) of ``fn``'s loss (times 1.7)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None
              for t in (x, x_hat, kl)]
    result = fn(*leaves, **kwargs)
    (1.7 * result.loss).backward()
    grads = [None if t is None else t.grad for t in leaves]
    return result, grads


_TOLERANCE_OF = {dtype: (atol, rtol) for dtype, atol, rtol in DTYPE_TOLERANCES}


def _close(actual, expected, atol, rtol, what):
    """At least the tolerance of ``actual``'s dtype (both sides round once to it; the
    Triton interpreter rounds float32 to bfloat16 by truncation, the GPU to nearest)."""
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    own_atol, own_rtol = _TOLERANCE_OF.get(actual.dtype, (0.0, 0.0))
    atol, rtol = max(atol, own_atol), max(rtol, own_rtol)
    torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), atol=atol,
                               rtol=rtol, msg=lambda m: f"{what}: {m}")


def _compare(backend, device, x, x_hat, kl, atol, rtol, **kwargs):
    ours, our_grads = _run(vsc_kernels.elbo_select, x, x_hat, kl, backend=backend, **kwargs)
    ref, ref_grads = _run(reference.elbo_select, x.cpu(), x_hat.cpu(),
                          None if kl is None else kl.cpu(), **kwargs)
    scale = max(1.0, ref.per_sample.abs().max().item()) if ref.per_sample.numel() else 1.0
    _close(ours.loss, ref.loss, atol * scale, rtol, "loss")
    _close(ours.per_sample, ref.per_sample, atol * scale, rtol, "per_sample")
    assert torch.equal(ours.index.cpu(), ref.index), "index"
    _close(ours.weights, ref.weights, atol, rtol, "weights")
    for name, got, want in zip(("x", "x_hat", "kl"), our_grads, ref_grads):
        if want is None:
            assert got is None, name
        else:
            gscale = max(want.abs().max().item(), 1e-30) if want.numel() else 1.0
            _close(got, want, atol * gscale, rtol, f"grad {name}")
    assert not ours.per_sample.requires_grad and not ours.weights.requires_grad
    assert ours.index.dtype == torch.long
    return ours


# --------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("recon", ["sum", "mean"])
def test_reference_reads_like_the_paper(method, recon):
    """Loops over b and j in float64: E, L = c E + beta kl (eq. 6), and the row objective
    (eq. 9 min, eq. 7 mean, -log mean exp(-L), or sum softmax(-L) L); weights are
    d l_b / d L."""
    x, x_hat, kl = _problem(4, 3, (2, 5), torch.float64, "cpu", "sample")
    beta, F = 0.7, 10
    c = 1.0 if recon == "sum" else 1.0 / F
    out = reference.elbo_select(x, x_hat, kl, beta=beta, method=method, recon=recon)
    rows = []
    for b in range(4):
        L = [c * sum((x_hat[b, j].flatten()[f] - x[b].flatten()[f]).item() ** 2
                     for f in range(F)) + beta * kl[b, j].item() for j in range(3)]
        assert out.per_sample[b].tolist() == pytest.approx(L, rel=1e-12)
        assert out.index[b].item() == min(range(3), key=lambda j: L[j])
        if method == "max":
            rows.append(min(L))
        elif method == "avg":
            rows.append(sum(L) / 3)
        elif method == "iwae":
            rows.append(-math.log(sum(math.exp(-v) for v in L) / 3))
        else:   # the public code's softmin: sum_j w_j L_j with w = softmax(-L)
            w = [math.exp(-v) / sum(math.exp(-u) for u in L) for v in L]
            rows.append(sum(wj * v for wj, v in zip(w, L)))
    assert out.loss.item() == pytest.approx(sum(rows) / 4, rel=1e-12)
    per_sample = out.per_sample.clone().requires_grad_()
    from vsc_kernels import _elbo
    _elbo.select_samples(per_sample, method)[0].sum().backward()
    torch.testing.assert_close(out.weights, per_sample.grad)


# --------------------------------------------------------------------------------------
# Backends against the reference
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("method", METHODS)
def test_backend_matches_reference(backend, dtype, atol, rtol, method):
    device = require_backend(backend)
    for i, (B, J, trailing) in enumerate(SHAPES):
        for recon in ("sum", "mean"):
            kl_kind = KL_KINDS[(i + (recon == "mean")) % 3]
            x, x_hat, kl = _problem(B, J, trailing, dtype, device, kl_kind, seed=i)
            _compare(backend, device, x, x_hat, kl, atol, rtol, beta=0.3, method=method,
                     recon=recon)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kl_kind", KL_KINDS)
def test_every_kl_shape_and_mixed_dtypes(backend, kl_kind):
    """kl None / (B,) / (B, J); bf16 x_hat with float32 x and kl promote to float32, and
    each gradient comes back in its input's dtype."""
    device = _device(backend)
    x, x_hat, kl = _problem(6, 5, (19,), torch.float32, device, kl_kind, seed=3)
    x_hat = x_hat.bfloat16()
    ours = _compare(backend, device, x, x_hat, kl, 1e-5, 1e-5, beta=2.0, method="avg")
    assert ours.loss.dtype == torch.float32
    _, grads = _run(vsc_kernels.elbo_select, x, x_hat, kl, backend=backend, method="iwae")
    assert grads[0].dtype == torch.float32 and grads[1].dtype == torch.bfloat16
    if kl is not None:
        assert grads[2].dtype == torch.float32 and grads[2].shape == kl.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_float64(backend, method):
    device = _device(backend)
    x, x_hat, kl = _problem(3, 3, (4,), torch.float64, device, "sample", seed=5)
    inputs = [t.requires_grad_() for t in (x, x_hat, kl)]

    def fn(x, x_hat, kl):
        return vsc_kernels.elbo_select(x, x_hat, kl, beta=0.6, method=method, recon="mean",
                                       backend=backend).loss

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)
    if method == "avg":   # a per-row kl (B,): its gradient sums over the samples
        row_kl = kl.detach()[:, 0].clone().requires_grad_()
        assert torch.autograd.gradcheck(fn, [x, x_hat, row_kl], eps=1e-6, atol=1e-7, rtol=1e-6)


# --------------------------------------------------------------------------------------
# Selection details and edge shapes
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lowest_index(backend):
    device = _device(backend)
    x, x_hat, _ = _problem(4, 4, (9,), torch.float32, device, seed=8, noise=1.0)
    x_hat[:, 1] = x + 0.01     # samples 1 and 3 tie for the best
    x_hat[:, 3] = x + 0.01
    x_hat = x_hat.requires_grad_()
    out = vsc_kernels.elbo_select(x, x_hat, method="max", backend=backend)
    assert out.index.tolist() == [1, 1, 1, 1]
    assert out.weights.cpu().tolist() == [[0.0, 1.0, 0.0, 0.0]] * 4
    out.loss.backward()
    grad = x_hat.grad.cpu()
    assert (grad[:, 1] != 0).all()
    assert (grad[:, [0, 2, 3]] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_sample_is_the_same_for_every_method(backend):
    device = _device(backend)
    x, x_hat, kl = _problem(7, 1, (11,), torch.float32, device, "row", seed=9)
    losses = [vsc_kernels.elbo_select(x, x_hat, kl, method=m, backend=backend) for m in METHODS]
    for out in losses:
        torch.testing.assert_close(out.loss, losses[0].loss)
        assert (out.weights == 1).all() and (out.index == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("trailing", [(6,), (2, 0)])
def test_empty_batch_and_empty_features(backend, trailing):
    device = _device(backend)
    for B in (0, 3):
        x = torch.randn(B, *trailing, device=device, requires_grad=True)
        x_hat = torch.randn(B, 2, *trailing, device=device, requires_grad=True)
        kl = torch.rand(B, 2, device=device, requires_grad=True)
        out = vsc_kernels.elbo_select(x, x_hat, kl, method="iwae", backend=backend)
        assert out.per_sample.shape == (B, 2) and out.index.shape == (B,)
        if B == 0:
            assert out.loss.item() == 0.0
        out.loss.backward()
        assert x.grad.shape == x.shape and x_hat.grad.shape == x_hat.shape
        assert kl.grad.shape == kl.shape and torch.isfinite(kl.grad).all()
        if x_hat.numel() == 0 and B:   # no features: L = beta kl, E = 0
            torch.testing.assert_close(out.per_sample, kl.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend):
    """x_hat with its J axis outermost, with a column stride of 2, and channels-last images
    (reshaped with a copy); x transposed. Gradients of x_hat only (x needs none)."""
    device = _device(backend)
    g = torch.Generator().manual_seed(11)
    B, J, F = 5, 3, 37
    x = torch.randn(F, B, generator=g).to(device).t()
    cases = {
        "J outer": torch.randn(J, B, F, generator=g).to(device).transpose(0, 1),
        "column stride 2": torch.randn(B, J, F, 2, generator=g).to(device)[..., 0],
        "J step 2": torch.randn(B, 2 * J, F, generator=g).to(device)[:, ::2],
    }
    for name, x_hat in cases.items():
        assert not x_hat.is_contiguous(), name
        for method in ("max", "avg"):
            ref, (_, ref_grad, _) = _run(reference.elbo_select, x.detach().cpu(), x_hat.cpu(),
                                         None, method=method)
            x_hat_leaf = x_hat.detach().requires_grad_()
            out = vsc_kernels.elbo_select(x, x_hat_leaf, method=method, backend=backend)
            (1.7 * out.loss).backward()
            _close(out.loss, ref.loss, 1e-5, 1e-5, name)
            _close(x_hat_leaf.grad, ref_grad, 1e-6, 1e-5, name)
    images = torch.randn(B * J, 3, 4, 5, generator=g).to(device)
    images = images.to(memory_format=torch.channels_last).requires_grad_()
    target = torch.randn(B, 3, 4, 5, generator=g).to(device)
    out = vsc_kernels.elbo_select(target, images.reshape(B, J, 3, 4, 5), method="avg",
                                  backend=backend)
    out.loss.backward()
    ref, (_, ref_grad, _) = _run(reference.elbo_select, target.cpu(),
                                 images.detach().cpu().reshape(B, J, 3, 4, 5), None,
                                 method="avg")
    _close(out.loss, ref.loss, 1e-5, 1e-5, "channels_last")
    _close(1.7 * images.grad.reshape(B, J, 3, 4, 5), ref_grad, 1e-6, 1e-5, "channels_last")


# --------------------------------------------------------------------------------------
# The backend contract directly
# --------------------------------------------------------------------------------------

def _contract(backend):
    device = require_backend(backend)
    from vsc_kernels._dispatch import backend_module

    return backend_module("elbo_select", backend), device


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backward_ignores_x_hat_where_the_gradient_is_zero(backend):
    """Rows with g == 0 come out as exact zeros, whatever x_hat holds there (NaN here)."""
    impl, device = _contract(backend)
    x, x_hat, _ = _problem(6, 4, (29,), torch.float32, "cpu", seed=12)
    g = torch.zeros(6, 4)
    g[torch.arange(6), torch.tensor([0, 3, 1, 2, 3, 0])] = torch.rand(6) + 0.5
    g[5, 1] = -0.25
    x_hat[g == 0] = float("nan")
    grad_x_hat, grad_x = impl.elbo_select_backward(g.to(device), x.to(device),
                                                   x_hat.to(device), True)
    grad_x_hat, grad_x = grad_x_hat.cpu(), grad_x.cpu()
    assert (grad_x_hat[g == 0] == 0).all()
    want_x_hat, want_x = reference.elbo_select_backward(g, x, x_hat.nan_to_num(), True)
    torch.testing.assert_close(grad_x_hat, want_x_hat)
    torch.testing.assert_close(grad_x, want_x)


def test_a_large_max_gradient_is_zero_filled_and_an_ordinary_tensor():
    """From 4 MB the C++ backward returns its gradient in a fresh zero-filled mapping and
    writes only the selected samples (csrc/cpu_memory.h, zeroed_output): the unselected
    rows read as exact zeros, and the tensor behaves as any other (in-place updates,
    autograd accumulation, freed with the graph)."""
    require_backend("cpp")
    B, J, F = 32, 8, 4096                      # 4 MB of float32
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, F, generator=g)
    for _ in range(3):                         # fresh mappings, released in between
        x_hat = (x[:, None] + 0.1 * torch.randn(B, J, F, generator=g)).requires_grad_()
        result = vsc_kernels.elbo_select(x, x_hat, None, method="max", backend="cpp")
        result.loss.backward()
        assert not x_hat.grad.untyped_storage().resizable()   # the mapping, not at::zeros
        want = x_hat.detach().clone().requires_grad_()
        reference.elbo_select(x, want, None, method="max").loss.backward()
        torch.testing.assert_close(x_hat.grad, want.grad)
        unselected = torch.ones(B, J, dtype=torch.bool)
        unselected[torch.arange(B), result.index] = False
        assert (x_hat.grad[unselected] == 0).all() and (x_hat.grad[~unselected] != 0).any()
        x_hat.grad.add_(1.0)                   # writable everywhere
        assert (x_hat.grad[unselected] == 1).all()


def test_an_avg_gradient_is_written_whole_without_zero_filling():
    """Every sample weighted (avg): the C++ backward writes every row, so its gradient is
    an ordinary allocation, neither zero-filled first nor the lazily zeroed mapping."""
    require_backend("cpp")
    B, J, F = 32, 8, 4096                      # 4 MB of float32
    g = torch.Generator().manual_seed(4)
    x = torch.randn(B, F, generator=g)
    x_hat = (x[:, None] + 0.1 * torch.randn(B, J, F, generator=g)).requires_grad_()
    vsc_kernels.elbo_select(x, x_hat, None, method="avg", backend="cpp").loss.backward()
    assert x_hat.grad.untyped_storage().resizable()   # at::empty, not the mapping
    want = x_hat.detach().clone().requires_grad_()
    reference.elbo_select(x, want, None, method="avg").loss.backward()
    torch.testing.assert_close(x_hat.grad, want.grad)


def test_large_gradient_cpp():
    """A grad x_hat above 16 MiB, which the C++ backward writes with streaming stores
    (F = 12289: rows start at every vector alignment, so both store paths run), with
    NaN in the x_hat rows it must not read."""
    impl, _ = _contract("cpp")
    x, x_hat, _ = _problem(64, 10, (12289,), torch.float32, "cpu", seed=13)
    g = torch.zeros(64, 10)
    chosen = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    g[torch.arange(64), chosen] = 1.5
    x_hat[g == 0] = float("nan")
    grad_x_hat, grad_x = impl.elbo_select_backward(g, x, x_hat, True)
    assert grad_x_hat.numel() * grad_x_hat.element_size() >= 16 << 20
    assert (grad_x_hat[g == 0] == 0).all()
    want_x_hat, want_x = reference.elbo_select_backward(g, x, x_hat.nan_to_num(), True)
    torch.testing.assert_close(grad_x_hat, want_x_hat)
    torch.testing.assert_close(grad_x, want_x)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_gradient_above_the_prefault_size_with_every_sample_weighted_cpp(threads):
    """Every sample weighted (avg, IWAE) and a grad x_hat above 32 MiB: the C++ backward
    maps the output's pages in batches ahead of each thread's writes (csrc/prefault.h)
    and writes every row with regular stores; rows of F = 12289 span several chunks."""
    impl, _ = _contract("cpp")
    x, x_hat, _ = _problem(70, 10, (12289,), torch.float32, "cpu", seed=14)
    g = torch.rand(70, 10, generator=torch.Generator().manual_seed(5)) + 0.1
    with num_threads(threads):
        grad_x_hat, grad_x = impl.elbo_select_backward(g, x, x_hat, True)
    assert grad_x_hat.numel() * grad_x_hat.element_size() >= 32 << 20
    want_x_hat, want_x = reference.elbo_select_backward(g, x, x_hat, True)
    torch.testing.assert_close(grad_x_hat, want_x_hat)
    torch.testing.assert_close(grad_x, want_x)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_contract_on_several_blocks(backend):
    """Shapes and tile sizes that make the kernels loop over several column blocks and
    row blocks (the interpreter's default tiles hold these shapes whole); the C++
    backward splits rows longer than 2048 columns into chunks."""
    impl, device = _contract(backend)
    configs = [None] if backend == "cpp" else [(2, 64, 4), (4, 16, 1)]
    for B, J, F in [(5, 3, 341), (3, 2, 2500)]:
        x, x_hat, _ = _problem(B, J, (F,), torch.float32, "cpu", seed=F)
        g = torch.randn(B, J)
        for config in configs:
            kwargs = {} if config is None else {"_config": config}
            on = [t.to(device) for t in (g, x, x_hat)]
            torch.testing.assert_close(impl.squared_error(*on[1:], **kwargs).cpu(),
                                       reference.squared_error(x, x_hat), rtol=1e-5, atol=0)
            for need_x in (True, False):
                got = [None if t is None else t.cpu()
                       for t in impl.elbo_select_backward(*on, need_x, **kwargs)]
                want = reference.elbo_select_backward(g, x, x_hat, need_x)
                torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
                if need_x:
                    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
                else:
                    assert got[1] is None


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

def _call(**overrides):
    args = dict(x=torch.zeros(4, 6), x_hat=torch.zeros(4, 3, 6), kl=None)
    args.update(overrides)
    args.setdefault("backend", "reference")
    return vsc_kernels.elbo_select(args.pop("x"), args.pop("x_hat"), args.pop("kl"), **args)


@pytest.mark.parametrize("overrides,error,match", [
    (dict(x_hat=torch.zeros(4)), ValueError, r"x_hat must have shape \(B, J, \.\.\.\)"),
    (dict(x=torch.zeros(4, 5)), ValueError, r"x must have shape \(B, \.\.\.\) = \(4, 6\)"),
    (dict(x=torch.zeros(3, 6)), ValueError, "x must have shape"),
    (dict(x=torch.zeros(4, 1, 6)), ValueError, "x must have shape"),
    (dict(x_hat=torch.zeros(4, 0, 6)), ValueError, "J = x_hat.shape"),
    (dict(x=torch.zeros(4, 6, dtype=torch.int64)), TypeError, "x must have a floating"),
    (dict(x_hat=torch.zeros(4, 3, 6, dtype=torch.bool)), TypeError, "x_hat must have a float"),
    (dict(x=[[0.0] * 6] * 4), TypeError, "x must be a torch.Tensor"),
    (dict(x_hat=torch.zeros(4, 3, 6, device="meta")), ValueError, "x_hat is on meta"),
    (dict(kl=torch.zeros(4, 2)), ValueError, r"kl must have shape \(4,\) or \(4, 3\)"),
    (dict(kl=torch.zeros(3)), ValueError, "kl must have shape"),
    (dict(kl=torch.zeros(4, dtype=torch.int32)), TypeError, "kl must have a floating"),
    (dict(kl=torch.zeros(4, device="meta")), ValueError, "kl is on meta"),
    (dict(beta=-0.5), ValueError, "beta must be >= 0"),
    (dict(beta="1"), TypeError, "beta must be a real number"),
    (dict(beta=float("inf")), ValueError, "beta must be finite"),
    (dict(method="min"), ValueError, "method must be one of"),
    (dict(recon="l1"), ValueError, "recon must be one of"),
    (dict(backend="fast"), ValueError, "backend must be one of"),
])
def test_bad_arguments(overrides, error, match):
    with pytest.raises(error, match=match):
        _call(**overrides)


# --------------------------------------------------------------------------------------
# torch.compile and training
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_ops_pass_opcheck(backend):
    """Schema, fake kernels, autograd registration and AOT dispatch of both custom ops."""
    from vsc_kernels.elbo_select import _elbo_select_backward_op, _elbo_select_op

    device = _device(backend)
    x, x_hat, kl = _problem(5, 3, (7,), torch.float32, device, "sample", seed=15)
    inputs = [t.requires_grad_() for t in (x, x_hat, kl)]
    torch.library.opcheck(_elbo_select_op, (*inputs, 0.5, "iwae", "sum", backend))
    grad = torch.rand(5, 3, device=device)
    torch.library.opcheck(_elbo_select_backward_op,
                          (grad, x.detach(), x_hat.detach().bfloat16(), True, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = _device(backend)
    torch._dynamo.reset()

    def step(x, x_hat, kl):
        out = vsc_kernels.elbo_select(torch.tanh(x), x_hat * 1.5, kl, beta=0.5,
                                      method="iwae", recon="mean", backend=backend)
        return out.loss * 2.0, out.per_sample, out.index

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x, x_hat, kl = _problem(5, 3, (2, 7), torch.float32, device, "row", seed=13)
    leaves = [t.requires_grad_() for t in (x, x_hat, kl)]
    loss, per_sample, index = compiled(*leaves)
    loss.backward()
    grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    eager_loss, eager_per_sample, eager_index = step(*leaves)
    eager_loss.backward()
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(per_sample, eager_per_sample)
    assert torch.equal(index, eager_index)
    for got, t in zip(grads, leaves):
        torch.testing.assert_close(got, t.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_autocast_training_step(backend):
    """x_hat from a small decoder under bf16 autocast; the loss's backward reaches the
    decoder's float32 weights, finite, and close to a float32 run's."""
    device = _device(backend)
    g = torch.Generator().manual_seed(14)
    decoder = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, 48)).to(device)
    z = torch.randn(6, 4, 8, generator=g).to(device)
    x = torch.randn(6, 48, generator=g).to(device)
    kl = torch.rand(6, 4, generator=g).to(device)
    for method in ("max", "avg"):
        grads = {}
        for precision in ("bf16", "fp32"):
            decoder.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                x_hat = decoder(z)
                assert x_hat.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
                out = vsc_kernels.elbo_select(x, x_hat, kl, beta=0.1, method=method,
                                              recon="mean", backend=backend)
            assert out.loss.dtype == torch.float32   # x and kl are float32
            out.loss.backward()
            grads[precision] = [p.grad.clone() for p in decoder.parameters()]
        for got, want in zip(grads["bf16"], grads["fp32"]):
            assert got.dtype == torch.float32 and torch.isfinite(got).all()
            if method == "avg":   # (max may pick another sample in bf16)
                assert (got - want).norm() <= 0.15 * want.norm()
