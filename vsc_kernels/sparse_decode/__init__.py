"""``sparse_decode``: ``z @ A^T`` for thresholded codes ``z`` that are mostly exact zeros.

The decoder of the paper's linear generator (section 4.1): codes from
:func:`vsc_kernels.threshold_sample` (eq. 2) have about 10% non-zeros, so the forward
product and the gradient of the dictionary ``A`` skip the zeros; the gradient of ``z``
stays dense (``grad_out @ A``), because the straight-through estimator (eq. 4) passes
it to every entry, zero or not.

How: ``torch.count_nonzero(z)`` is read back (one host synchronisation per call, and
one more in the backward) and the density picks the path: above ``dense_above`` the
dense ``torch.matmul`` runs in the input dtype (:data:`CROSSOVER_DENSITY`). Else the
backend skips the zeros (contract in ``reference.py``): Triton compresses ``z`` to CSR
with torch ops and runs one CSR x dense kernel for ``out = CSR(z) @ A^T`` (each
non-zero gathers one contiguous row of ``A^T``) and ``grad_A^T = CSR(z^T) @ grad_out``
(the CSC of ``z``); the C++ kernels scan ``z`` directly. No atomics: deterministic.

Layers (as in Liger-Kernel): ``reference.py`` (plain PyTorch, the oracle and the
backend contract), ``triton_kernels.py`` (CUDA), ``cpp_backend.py`` -> ``csrc/`` (CPU),
and this module: argument checks, the ``torch.library`` custom ops with their autograd
and fake kernels, and the public function.
"""

from __future__ import annotations

import math

import torch

from .. import _checks
from .._dispatch import backend_module, resolve_backend
from . import reference

__all__ = ["sparse_decode", "CROSSOVER_DENSITY"]

_OP = "sparse_decode"

# Density of z (non-zeros / elements) above which the dense torch.matmul is faster than
# the sparse kernels, by (device type, dtype); used when dense_above=None.
CROSSOVER_DENSITY: dict[tuple[str, torch.dtype], float] = {
    # CPU: from `python bench/sparse_decode.py --device cpu --dtypes float32 --shapes
    # 256x256,2048x1024 --repeats 3` (N = 5120; bench/results/sparse_decode_cpu.json; an
    # AMD EPYC with 2 threads shared with other jobs, so times are noisy): crossovers
    # d=256, D=256: forward 0.16, fwd+bwd 0.075 (differences of 5-10%, within the noise);
    # d=2048, D=1024: forward 0.32, fwd+bwd > 0.5. 0.15 keeps the sparse path at the
    # paper's ~10% density, where it is 2.9x faster (forward) on the larger shape.
    # float64/float16/bfloat16: not measured; the float32 value (the C++ kernels
    # compute in float32 for 16-bit inputs).
    ("cpu", torch.float32): 0.15,
    ("cpu", torch.float64): 0.15,
    ("cpu", torch.float16): 0.15,
    ("cpu", torch.bfloat16): 0.15,
    # CUDA: measured on an H100 (bench/results/sparse_decode_cuda.json, N = 5120,
    # torch 2.11, Triton 3.6). The sparse forward beats dense fp32 matmul only at 1%
    # density and d >= 2048 (1.3x), and forward+backward never wins (0.65x at 1%, 0.56x
    # at 10%); bf16 cuBLAS runs at ~400 TFLOP/s on tensor cores, 10-50x faster than
    # the gather kernel at every density. So the default on CUDA is the dense path;
    # dense_above=1.0 forces the sparse kernels.
    ("cuda", torch.float32): 0.0,
    ("cuda", torch.float64): 0.0,
    ("cuda", torch.float16): 0.0,
    ("cuda", torch.bfloat16): 0.0,
}
_DEFAULT_CROSSOVER = 0.05  # other devices (only the reference runs there)


def crossover_density(device_type: str, dtype: torch.dtype) -> float:
    """The default ``dense_above`` for tensors of this device type and dtype."""
    return CROSSOVER_DENSITY.get((device_type, dtype), _DEFAULT_CROSSOVER)


# --------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------

def _count_if_sparse(z: torch.Tensor, dense: torch.Tensor, dense_above: float) -> int | None:
    """``z``'s non-zero count when the sparse path runs (density <= dense_above, and the
    dense operand ``A`` or ``grad_out`` finite), else None. The count and the finiteness are
    read back together: the op's one host synchronisation.

    Non-finite policy: the sparse kernels skip z's zeros, so a NaN or inf in the dense
    operand would not reach the outputs that the dense product (``0 * nan = nan``) gives
    NaN; such calls take the dense path, whose results propagate it like the reference."""
    if dense_above <= 0.0:
        return None
    nnz, finite = torch.stack((torch.count_nonzero(z),
                               torch.isfinite(dense).all().to(torch.int64))).tolist()
    if not finite:
        return None
    return nnz if nnz <= dense_above * z.numel() else None


@torch.library.custom_op("vsc_kernels::sparse_decode", mutates_args=())
def _sparse_decode_op(z: torch.Tensor, A: torch.Tensor, dense_above: float,
                      backend: str) -> torch.Tensor:
    """``z (N, d) @ A (D, d)^T``; ``z`` and ``A`` of one dtype."""
    nnz = _count_if_sparse(z, A, dense_above)
    if nnz is None:
        return torch.matmul(z, A.T)
    return backend_module(_OP, backend).decode(z, A.T, nnz)


@_sparse_decode_op.register_fake
def _(z, A, dense_above, backend):
    return z.new_empty((z.shape[0], A.shape[0]))


@torch.library.custom_op("vsc_kernels::sparse_decode_grad_weight", mutates_args=())
def _grad_weight_op(grad_out: torch.Tensor, z: torch.Tensor, dense_above: float,
                    backend: str) -> torch.Tensor:
    """``grad_A^T = z^T @ grad_out``, shape ``(d, D)``, skipping z's zeros."""
    nnz = _count_if_sparse(z, grad_out, dense_above)
    if nnz is None:
        return torch.matmul(z.T, grad_out)
    return backend_module(_OP, backend).grad_weight_t(z, grad_out, nnz)


@_grad_weight_op.register_fake
def _(grad_out, z, dense_above, backend):
    return z.new_empty((z.shape[1], grad_out.shape[1]))


def _setup_context(ctx, inputs, output):
    z, A, dense_above, backend = inputs
    ctx.save_for_backward(z, A)
    ctx.params = (dense_above, backend)


def _backward(ctx, grad_out):
    z, A = ctx.saved_tensors
    dense_above, backend = ctx.params
    grad_out = grad_out.to(z.dtype)
    grad_z = grad_A = None
    if ctx.needs_input_grad[0]:
        grad_z = torch.matmul(grad_out, A)            # dense: eq. (4) needs every entry
    if ctx.needs_input_grad[1]:
        grad_A = _grad_weight_op(grad_out, z, dense_above, backend).T
    return grad_z, grad_A, None, None


_sparse_decode_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def _check_arguments(z, A, dense_above):
    _checks.float_tensor("z", z)
    _checks.float_tensor("A", A)
    if z.dim() < 1:
        raise ValueError("z must have at least one dimension (the code axis d)")
    if A.dim() != 2:
        raise ValueError(f"A must be a (D, d) dictionary, got shape {tuple(A.shape)}")
    if A.shape[1] != z.shape[-1]:
        raise ValueError(f"A must have d = z.shape[-1] = {z.shape[-1]} columns, got A of "
                         f"shape {tuple(A.shape)}")
    _checks.same_device("A", A, "z", z)
    if dense_above is not None:
        dense_above = _checks.real_number("dense_above", dense_above, minimum=0.0)
        if dense_above > 1.0:
            raise ValueError(f"dense_above must be <= 1, got {dense_above}")
    return dense_above


def sparse_decode(z: torch.Tensor, A: torch.Tensor, *, dense_above: float | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """``z @ A^T`` (the linear generator's ``A z`` for each code), skipping ``z``'s zeros.

    Args:
        z: codes ``(..., d)``, mostly exact zeros (e.g. from
            :func:`vsc_kernels.threshold_sample`); float16/bfloat16/float32 (float64 for
            gradient checks).
        A: dictionary ``(D, d)``; promoted with ``z``'s dtype.
        dense_above: the sparse kernel runs when the density of ``z`` (non-zeros /
            elements) is at most this, the dense ``torch.matmul`` (input dtype) above it;
            ``0.0`` always dense, ``1.0`` always sparse. ``None``: the measured crossover
            :data:`CROSSOVER_DENSITY` for the device and dtype.
        backend: ``"reference"`` (plain matmul, the oracle), ``"triton"``, ``"cpp"`` or
            ``"auto"``; default ``$VSC_KERNELS_BACKEND`` or by device.

    Returns:
        ``(..., D)`` in the promoted dtype, accumulated in float32 (float64 for float64).
        Gradients: ``grad_z = grad_out @ A`` (dense, at every entry of ``z``) and
        ``grad_A = grad_out^T @ z`` (sparse: over the non-zeros of ``z``).

    Cost: counting the non-zeros reads one number back to the host (a synchronisation
    on CUDA) in the forward and again in the backward, unless ``dense_above=0``: the one
    documented exception to the ops' no-synchronisation rule. Non-finite values: NaN and
    inf in ``z`` or ``A`` propagate as in the dense product (a call whose ``A`` or
    ``grad_out`` holds one takes the dense path, so a zero of ``z`` times NaN is NaN).
    """
    dense_above = _check_arguments(z, A, dense_above)
    chosen = resolve_backend(backend, z.device.type)
    dtype = torch.promote_types(z.dtype, A.dtype)
    z, A = z.to(dtype), A.to(dtype)
    if chosen == "reference":
        return reference.sparse_decode(z, A)
    if dense_above is None:
        dense_above = crossover_density(z.device.type, dtype)
    d, D = A.shape[1], A.shape[0]
    rows = math.prod(z.shape[:-1])
    out = _sparse_decode_op(z.reshape(rows, d), A, dense_above, chosen)
    return out.reshape(z.shape[:-1] + (D,))
