"""sparse_decode: z @ A^T skipping z's zeros. Every kernel backend against the float64
oracle (within twice the error of the same-dtype torch product, plus a small atol), on
both paths (forced sparse, forced dense), over densities, odd and empty shapes,
non-contiguous inputs; gradients (grad_z dense, grad_A sparse), gradcheck, the density
dispatch, bad input and torch.compile."""

import pytest
import torch

import vsc_kernels
from vsc_kernels import sparse_decode
from vsc_kernels.sparse_decode import cpp_backend, crossover_density, reference
from vsc_kernels.sparse_decode import triton_kernels

from _utils import num_threads, require_backend

BACKENDS = ["reference", "cpp", "triton"]
KERNEL_BACKENDS = ["cpp", "triton"]
PATHS = {"sparse": 1.0, "dense": 0.0}
DENSITIES = [0.0, 0.01, 0.1, 0.6, 1.0]

# atol for the rule |ours - oracle| <= 2 |torch same-dtype - oracle| + atol + rtol |oracle|:
# the kernels accumulate in float32 and round once to the output dtype, as torch does.
TOLERANCES = {torch.float32: (1e-5, 1e-6), torch.float16: (1e-3, 1e-3),
              torch.bfloat16: (8e-3, 8e-3), torch.float64: (1e-12, 1e-12)}


def _device(backend):
    return torch.device("cpu") if backend == "reference" else require_backend(backend)


def _codes(shape, density, seed=0, dtype=torch.float32):
    """Codes like threshold_sample's: N(0, 1) values, exact zeros elsewhere."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=g, dtype=torch.float64)
    keep = torch.rand(shape, generator=g, dtype=torch.float64) < density
    return (values * keep).to(dtype)


def _dictionary(D, d, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, d, generator=g, dtype=torch.float64).to(dtype)


def _assert_close_to_oracle(ours, same_dtype, oracle, dtype):
    atol, rtol = TOLERANCES[dtype]
    ours, same_dtype = ours.cpu().double(), same_dtype.cpu().double()
    bound = 2 * (same_dtype - oracle).abs() + atol + rtol * oracle.abs()
    excess = (ours - oracle).abs() - bound
    assert excess.numel() == 0 or excess.max() <= 0, f"max excess {excess.max().item():g}"


def _oracles(z, A):
    return z.double() @ A.double().T, (z @ A.T)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("density", DENSITIES)
def test_forward_matches_oracle(backend, dtype, path, density):
    device = require_backend(backend)
    z = _codes((3, 4, 37), density, dtype=dtype)
    A = _dictionary(29, 37, dtype=dtype)
    out = sparse_decode(z.to(device), A.to(device), dense_above=PATHS[path], backend=backend)
    assert out.shape == (3, 4, 29) and out.dtype == dtype and out.device.type == device.type
    oracle, same = _oracles(z, A)
    _assert_close_to_oracle(out, same, oracle, dtype)
    if density == 0.0:
        assert (out == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", list(PATHS))
def test_gradients(backend, dtype, path):
    device = _device(backend)
    z = _codes((5, 3, 37), 0.1, dtype=dtype)
    A = _dictionary(23, 37, dtype=dtype)
    grad_out = _codes((5, 3, 23), 1.0, seed=2, dtype=dtype)
    zd = z.to(device).requires_grad_()
    Ad = A.to(device).requires_grad_()
    sparse_decode(zd, Ad, dense_above=PATHS[path], backend=backend).backward(grad_out.to(device))
    assert zd.grad.dtype == dtype and Ad.grad.dtype == dtype
    g64 = grad_out.double()
    # grad_z is dense: grad_out @ A at every entry, also where z == 0.
    _assert_close_to_oracle(zd.grad, grad_out @ A, g64 @ A.double(), dtype)
    assert (zd.grad[z == 0] != 0).all()
    flat_g, flat_z = grad_out.reshape(-1, 23), z.reshape(-1, 37)
    _assert_close_to_oracle(Ad.grad, flat_g.T @ flat_z,
                            flat_g.double().T @ flat_z.double(), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_codes_give_zero_output_and_dictionary_gradient(backend):
    device = _device(backend)
    z = torch.zeros(4, 6, 16, device=device, requires_grad=True)
    A = _dictionary(9, 16).to(device).requires_grad_()
    out = sparse_decode(z, A, dense_above=1.0, backend=backend)
    grad_out = torch.ones_like(out)
    out.backward(grad_out)
    assert (out == 0).all() and (A.grad == 0).all()
    torch.testing.assert_close(z.grad, (grad_out @ A).detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64_sparse_path(backend):
    device = _device(backend)
    z = _codes((3, 2, 5), 0.5, seed=4, dtype=torch.float64).to(device).requires_grad_()
    A = _dictionary(4, 5, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z, A: sparse_decode(z, A, dense_above=1.0, backend=backend), (z, A))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("N,D,d", [(1, 1, 1), (6, 7, 5), (0, 9, 37), (4, 3, 341), (5, 4, 0)])
def test_odd_and_empty_shapes(backend, N, D, d):
    device = require_backend(backend)
    z = _codes((N, d), 0.3, seed=N + d, dtype=torch.float64).to(device).requires_grad_()
    A = _dictionary(D, d, dtype=torch.float64).to(device).requires_grad_()
    out = sparse_decode(z, A, dense_above=1.0, backend=backend)
    assert out.shape == (N, D)
    grad_out = _codes((N, D), 1.0, seed=5, dtype=torch.float64).to(device)
    out.backward(grad_out)
    zc, Ac, gc = z.detach().cpu(), A.detach().cpu(), grad_out.cpu()
    torch.testing.assert_close(out.detach().cpu(), zc @ Ac.T, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(z.grad.cpu(), gc @ Ac, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(A.grad.cpu(), gc.T @ zc, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_one_dimensional_codes_and_large_columns(backend):
    device = require_backend(backend)
    z = _codes((341,), 0.1, seed=8)
    A = _dictionary(300, 341)   # D = 300: several column blocks on the GPU
    out = sparse_decode(z.to(device), A.to(device), dense_above=1.0, backend=backend)
    assert out.shape == (300,)
    torch.testing.assert_close(out.cpu(), (z.double() @ A.double().T).float(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("path", list(PATHS))
def test_non_contiguous_inputs(backend, path):
    device = require_backend(backend)
    big_z = _codes((8, 6, 2 * 37), 0.1, seed=6).to(device)
    z = big_z.transpose(0, 1)[..., ::2]            # (6, 8, 37), no unit stride
    A = _dictionary(37, 2 * 25).to(device).T[::2]   # (25, 37), transposed and strided
    assert not z.is_contiguous() and not A.is_contiguous()
    z.requires_grad_()
    A.requires_grad_()
    out = sparse_decode(z, A, dense_above=PATHS[path], backend=backend)
    grad_out = _codes(out.shape, 1.0, seed=7).to(device)
    out.backward(grad_out)
    zc, Ac, gc = (t.detach().cpu().double() for t in (z, A, grad_out))
    torch.testing.assert_close(out.detach().cpu().double(), zc @ Ac.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z.grad.cpu().double(), gc @ Ac, atol=1e-5, rtol=1e-5)
    flat_g, flat_z = gc.reshape(-1, 25), zc.reshape(-1, 37)
    torch.testing.assert_close(A.grad.cpu().double(), flat_g.T @ flat_z, atol=1e-5, rtol=1e-5)


def test_csr_compression_order_and_values():
    z = torch.tensor([[0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 4.0, 5.0]])
    crow, col, val = reference.compress(z, 5)
    assert crow.tolist() == [0, 2, 2, 5]
    assert col.tolist() == [1, 3, 0, 2, 3] and val.tolist() == [2.0, -1.0, 3.0, 4.0, 5.0]
    crow, col, val = reference.compress(z.T, 5)     # the CSC of z: by column, then row
    assert crow.tolist() == [0, 1, 2, 3, 5]
    assert col.tolist() == [2, 0, 2, 0, 2] and val.tolist() == [3.0, 2.0, 4.0, -1.0, 5.0]


@pytest.mark.parametrize("config", [None, dict(BLOCK_D=16, BLOCK_NZ=8, num_warps=1)])
def test_triton_csr_kernel_matches_reference_contract(config):
    """The primitive alone: empty rows, a long row, rows longer than one non-zero block,
    and small blocks so that several column blocks and masked steps run."""
    device = require_backend("triton")
    g = torch.Generator().manual_seed(9)
    counts = torch.tensor([0, 3, 0, 70, 1, 17, 0])
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    nnz = int(crow[-1])
    col = torch.randint(0, 11, (nnz,), generator=g)
    val = torch.randn(nnz, generator=g)
    dense = torch.randn(11, 45, generator=g)
    exact = torch.zeros(7, 45, dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(7), counts)
    exact.index_add_(0, rows, val.double()[:, None] * dense.double()[col])
    torch.testing.assert_close(reference.csr_spmm(crow, col, val, dense).double(), exact,
                               atol=1e-5, rtol=1e-5)
    out = triton_kernels.csr_spmm(*(t.to(device) for t in (crow, col, val, dense)),
                                  _config=config)
    assert out.shape == (7, 45) and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu().double(), exact, atol=1e-5, rtol=1e-5)
    assert (out[counts == 0] == 0).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_deterministic(backend):
    device = require_backend(backend)
    z = _codes((64, 40), 0.2, seed=10).to(device).requires_grad_()
    A = _dictionary(33, 40).to(device).requires_grad_()
    results = []
    for _ in range(2):
        z.grad = A.grad = None
        out = sparse_decode(z, A, dense_above=1.0, backend=backend)
        out.backward(torch.ones_like(out))
        results.append((out.detach().clone(), A.grad.clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_float32_dictionary_gradient_is_the_ordered_sum_over_rows(threads):
    """The C++ float32 z^T g (blocks of rows, counting-sorted non-zeros, columns in
    chunks, per-thread blocks of k) equals, bit for bit, adding z[n, k] g[n, :] over n in
    order from zero with float32 products and sums: the rounding the kernel documents.
    The shape spans several row blocks (512 rows), column chunks and register tiles plus a
    ragged last one, and both threads' blocks of k."""
    require_backend("cpp")
    N, d, D = 1300, 37, 1100
    z = _codes((N, d), 0.1, seed=3)
    z[5, :] = -0.0
    g = torch.randn(N, D, generator=torch.Generator().manual_seed(4))
    want = torch.zeros(d, D)
    for n in range(N):  # float32 product then float32 sum, separately rounded
        want += z[n].unsqueeze(1) * g[n].unsqueeze(0)
    with num_threads(threads):
        got = cpp_backend.grad_weight_t(z, g, int((z != 0).sum()))
    assert torch.equal(got, want)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_forward_above_the_prefault_size(threads):
    """An output above 32 MiB, whose pages the C++ forward maps in batches ahead of each
    thread's rows (csrc/prefault.h): the float64 product's values, rounded."""
    require_backend("cpp")
    N, d, D = 8200, 48, 1024
    z = _codes((N, d), 0.1, seed=5)
    A = torch.randn(D, d, generator=torch.Generator().manual_seed(6))
    with num_threads(threads):
        got = cpp_backend.decode(z, A.t().contiguous(), int((z != 0).sum()))
    assert got.numel() * got.element_size() >= 32 << 20
    torch.testing.assert_close(got, (z.double() @ A.double().t()).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_density_dispatch(backend, monkeypatch):
    """The kernel runs (forward and gradient of A) iff the density is <= dense_above;
    the default threshold is the crossover table's entry."""
    device = require_backend(backend)
    module = cpp_backend if backend == "cpp" else triton_kernels
    calls = []
    for name in ("decode", "grad_weight_t"):
        def counting(*args, _original=getattr(module, name), _name=name):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(module, name, counting)
    z = _codes((20, 10), 1.0, seed=11)
    z[:, 6:] = 0                                      # density exactly 0.6
    A = _dictionary(7, 10)
    for dense_above, runs_sparse in ((0.5, False), (0.6, True), (1.0, True), (0.0, False)):
        calls.clear()
        zd = z.to(device).requires_grad_()
        out = sparse_decode(zd, A.to(device).requires_grad_(), dense_above=dense_above,
                            backend=backend)
        out.sum().backward()
        assert calls == (["decode", "grad_weight_t"] if runs_sparse else []), dense_above
    calls.clear()
    sparse_decode(z.to(device), A.to(device), backend=backend)
    runs_sparse = 0.6 <= crossover_density(device.type, torch.float32)
    assert len(calls) == int(runs_sparse)


def test_non_finite_dictionary_entries_propagate_like_the_dense_product():
    """Non-finite policy: an exact zero of z against inf in A gives NaN, as the dense
    product does (such a call takes the dense path), never a finite number."""
    z = _codes((4, 8), 1.0, seed=12)
    z[:, 3] = 0
    A = _dictionary(5, 8)
    A[2, 3] = float("inf")
    out = sparse_decode(z, A, dense_above=1.0, backend="cpp")
    assert torch.isnan(out[:, 2]).all()
    torch.testing.assert_close(out, z @ A.T, equal_nan=True)
    assert torch.isnan(sparse_decode(z, A, dense_above=0.0, backend="cpp")[:, 2]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_promote(backend):
    device = _device(backend)
    z = _codes((6, 12), 0.2, seed=13, dtype=torch.bfloat16).to(device).requires_grad_()
    A = _dictionary(5, 12).to(device).requires_grad_()
    out = sparse_decode(z, A, dense_above=1.0, backend=backend)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert z.grad.dtype == torch.bfloat16 and A.grad.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = _device(backend)
    torch._dynamo.reset()

    def step(z, A):
        return (sparse_decode(torch.relu(z), A, dense_above=0.5, backend=backend) ** 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    z = _codes((3, 4, 16), 0.3, seed=14).to(device).requires_grad_()
    A = _dictionary(9, 16).to(device).requires_grad_()
    compiled(z, A).backward()
    grads = [z.grad.clone(), A.grad.clone()]
    z.grad = A.grad = None
    step(z, A).backward()
    torch.testing.assert_close(grads[0], z.grad)
    torch.testing.assert_close(grads[1], A.grad)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(z=torch.zeros(())), ValueError, "z must have at least one dimension"),
    (dict(z=torch.zeros(3, 5)), ValueError, r"A must have d = z.shape\[-1\] = 5 columns"),
    (dict(A=torch.zeros(4)), ValueError, r"A must be a \(D, d\) dictionary"),
    (dict(A=torch.zeros(2, 4, 6)), ValueError, r"A must be a \(D, d\) dictionary"),
    (dict(z=torch.zeros(3, 6, dtype=torch.int64)), TypeError, "z must have a floating"),
    (dict(A=torch.zeros(4, 6, dtype=torch.bool)), TypeError, "A must have a floating"),
    (dict(z=[[0.0] * 6]), TypeError, "z must be a torch.Tensor"),
    (dict(A=torch.zeros(4, 6, device="meta")), ValueError, "A is on meta but z is on cpu"),
    (dict(dense_above=-0.1), ValueError, "dense_above must be >= 0"),
    (dict(dense_above=1.5), ValueError, "dense_above must be <= 1"),
    (dict(dense_above=float("nan")), ValueError, "dense_above must be finite"),
    (dict(dense_above="0.5"), TypeError, "dense_above must be a real number"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
])
def test_bad_input(kwargs, error, match):
    args = dict(z=torch.zeros(3, 6), A=torch.zeros(4, 6), dense_above=None, backend="cpp")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sparse_decode(args.pop("z"), args.pop("A"), **args)


def test_exported():
    assert vsc_kernels.sparse_decode is sparse_decode
    assert "sparse_decode" in vsc_kernels.__all__
