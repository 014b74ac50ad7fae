"""``linear_elbo``: the ELBO of the linear generator, fused (section 4.1, eqs. 11-12).

For data ``x (B, D)``, ``J`` codes per row ``z (B, J, d)`` and the dictionary
``A (D, d)``, the per-sample loss ``L[b, j] = ||x_b - A z_bj||^2 * c + beta * KL`` and
its selection over ``j`` (max ELBO, eq. 9; average, eq. 7; IWAE; softmin) -- without
building the ``(B, J, D)`` reconstructions: the kernels reduce ``||x_b - A z_bj||^2`` in
the epilogue of the product ``z A^T``, and the backward recomputes residuals (only the
selected ones for ``method="max"``).

Layers: ``reference.py`` (plain PyTorch, the oracle and the backend contract),
``triton_kernels.py`` (CUDA), ``cpp_backend.py`` -> ``csrc/linear_elbo.cpp`` (CPU), and
this module: argument checks, the ``torch.library`` custom op with its autograd and
fake kernels, and the public function.
"""

from __future__ import annotations

import torch

from .. import _checks, _elbo
from .._dispatch import backend_module, resolve_backend, resolve_backend_cached
from .._elbo import ElboResult
from .._precision import compute_dtype
from . import reference

__all__ = ["linear_elbo", "ElboResult"]

_OP = "linear_elbo"


# --------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------

def _forward(x, z, A, kl, beta, method, recon, impl):
    scale = _elbo.recon_scale(recon, x.shape[1])
    if method in getattr(impl, "FUSED_METHODS", ()):
        return impl.fused_forward(x, z, A, kl, beta, scale, method)
    E = impl.squared_error(x, z, A)
    per_sample = _elbo.per_sample_loss(E, kl, beta, scale)
    row_loss, index, weights = _elbo.select_samples(per_sample, method)
    return _elbo.mean_over_rows(row_loss), per_sample, index, weights


@torch.library.custom_op("vsc_kernels::linear_elbo", mutates_args=())
def _linear_elbo_op(x: torch.Tensor, z: torch.Tensor, A: torch.Tensor, kl: torch.Tensor | None,
                    beta: float, method: str, recon: str,
                    backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, z, A, kl, beta, method, recon, backend_module(_OP, backend))


@_linear_elbo_op.register_fake
def _(x, z, A, kl, beta, method, recon, backend):
    B, J = z.shape[0], z.shape[1]
    work = compute_dtype(x.dtype)
    return (x.new_empty((), dtype=work), x.new_empty((B, J), dtype=work),
            x.new_empty((B,), dtype=torch.long), x.new_empty((B, J), dtype=work))


def _backend_backward(backend: str):
    """The backend's backward contract (``reference.linear_elbo_backward`` unless the
    backend module has its own)."""
    return getattr(backend_module(_OP, backend), "linear_elbo_backward",
                   reference.linear_elbo_backward)


@torch.library.custom_op("vsc_kernels::linear_elbo_backward", mutates_args=())
def _linear_elbo_backward_op(grad_E: torch.Tensor, index: torch.Tensor | None, x: torch.Tensor,
                             z: torch.Tensor, A: torch.Tensor, need_x: bool, need_z: bool,
                             need_A: bool,
                             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward contract as an opaque op for torch.compile (the C++ one calls into the
    extension); gradients not asked for come back empty."""
    grads = _backend_backward(backend)(grad_E, index, x, z, A, need_x, need_z, need_A)
    return tuple(grad_E.new_empty((0,)) if g is None else g for g in grads)


@_linear_elbo_backward_op.register_fake
def _(grad_E, index, x, z, A, need_x, need_z, need_A, backend):
    B, J, d = z.shape
    D = x.shape[1]
    shapes = ((B, D) if need_x else (0,), (B, J, d) if need_z else (0,),
              (D, d) if need_A else (0,))
    return tuple(grad_E.new_empty(shape) for shape in shapes)


def _setup_context(ctx, inputs, output):
    x, z, A, kl, beta, method, recon, backend = inputs
    _, per_sample, index, weights = output
    ctx.mark_non_differentiable(per_sample, index, weights)
    ctx.save_for_backward(x, z, A, kl, index, weights)
    ctx.params = (beta, method, recon)
    ctx.backend = backend


def _as(tensor, dtype):
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _gradients(ctx, grad_loss, backward_fn):
    x, z, A, kl, index, weights = ctx.saved_tensors
    beta, method, recon = ctx.params[:3]
    need_x, need_z, need_A, need_kl = ctx.needs_input_grad[:4]
    # d loss / d L[b, j] = grad_loss * weights[b, j] / B (see vsc_kernels._elbo).
    grad_L = grad_loss.to(weights.dtype) * weights / max(z.shape[0], 1)
    grad_x = grad_z = grad_A = grad_kl = None
    if need_x or need_z or need_A:
        scale = _elbo.recon_scale(recon, x.shape[1])
        grad_E = grad_L * scale if scale != 1.0 else grad_L
        args = (grad_E, index if method == "max" else None, x, z, A, need_x, need_z, need_A)
        if torch.is_autocast_enabled(x.device.type):
            # A backward called inside an autocast region must not run its products in bf16.
            with torch.autocast(x.device.type, enabled=False):
                grad_x, grad_z, grad_A = backward_fn(*args)
        else:
            grad_x, grad_z, grad_A = backward_fn(*args)
        grad_x = _as(grad_x, x.dtype) if need_x else None
        grad_z = _as(grad_z, z.dtype) if need_z else None
        grad_A = _as(grad_A, A.dtype) if need_A else None
    if need_kl:
        grad_kl = _elbo.kl_gradient(grad_L, kl, beta)
    return grad_x, grad_z, grad_A, grad_kl


def _backward(ctx, grad_loss, grad_per_sample, grad_index, grad_weights):
    def backward_fn(grad_E, index, x, z, A, need_x, need_z, need_A):
        return _linear_elbo_backward_op(grad_E, index, x, z, A, bool(need_x), bool(need_z),
                                        bool(need_A), ctx.backend)

    return _gradients(ctx, grad_loss, backward_fn) + (None, None, None, None)


_linear_elbo_op.register_autograd(_backward, setup_context=_setup_context)


class _LinearElboFunction(torch.autograd.Function):
    """Eager autograd calling the backend directly (no ``torch.library`` dispatch); under
    ``torch.compile`` the custom op above is traced instead. ``config``: ``(beta, method,
    recon, impl)``."""

    @staticmethod
    def forward(ctx, x, z, A, kl, config):
        beta, method, recon, impl = config
        loss, per_sample, index, weights = _forward(x, z, A, kl, beta, method, recon, impl)
        ctx.mark_non_differentiable(per_sample, index, weights)
        ctx.save_for_backward(x, z, A, kl, index, weights)
        ctx.params = config
        return loss, per_sample, index, weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_per_sample, grad_index, grad_weights):
        impl = ctx.params[3]
        backward_fn = getattr(impl, "linear_elbo_backward", reference.linear_elbo_backward)
        return _gradients(ctx, grad_loss, backward_fn) + (None,)


def _run(x, z, A, kl, beta, method, recon, backend):
    if torch.compiler.is_compiling():
        return _linear_elbo_op(x, z, A, kl, beta, method, recon, backend)
    impl = backend_module(_OP, backend)
    if torch.is_grad_enabled() and (x.requires_grad or z.requires_grad or A.requires_grad or (
            kl is not None and kl.requires_grad)):
        return _LinearElboFunction.apply(x, z, A, kl, (beta, method, recon, impl))
    return _forward(x, z, A, kl, beta, method, recon, impl)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def _check_arguments(x, z, A, kl, beta, method, recon):
    _checks.float_tensor("x", x)
    _checks.float_tensor("z", z)
    _checks.float_tensor("A", A)
    if x.dim() != 2:
        raise ValueError(f"x must be a (B, D) matrix, got shape {tuple(x.shape)}")
    if z.dim() != 3:
        raise ValueError(f"z must be (B, J, d) codes (J samples per row), got shape "
                         f"{tuple(z.shape)}")
    if A.dim() != 2:
        raise ValueError(f"A must be a (D, d) dictionary, got shape {tuple(A.shape)}")
    _checks.same_device("z", z, "x", x)
    _checks.same_device("A", A, "x", x)
    if A.shape[0] != x.shape[1]:
        raise ValueError(f"A must have D = x.shape[1] = {x.shape[1]} rows, got A of shape "
                         f"{tuple(A.shape)}")
    if z.shape[2] != A.shape[1]:
        raise ValueError(f"z must have d = A.shape[1] = {A.shape[1]} features, got z of shape "
                         f"{tuple(z.shape)}")
    if z.shape[0] != x.shape[0]:
        raise ValueError(f"z must have B = x.shape[0] = {x.shape[0]} rows, got z of shape "
                         f"{tuple(z.shape)}")
    if z.shape[1] < 1:
        raise ValueError("z must hold at least one sample (J >= 1), got J = 0")
    beta = _elbo.check_options(beta, method, recon)
    kl = _elbo.check_kl(kl, z.shape[0], z.shape[1], x)
    return kl, beta


def linear_elbo(x: torch.Tensor, z: torch.Tensor, A: torch.Tensor,
                kl: torch.Tensor | None = None, *, beta: float = 1.0, method: str = "max",
                recon: str = "sum", backend: str | None = None) -> ElboResult:
    """Negative ELBO of the linear generator ``x ~ A z`` (eqs. 6, 12), selected over ``J``
    samples per row.

    ``L[b, j] = ||x_b - A z_bj||^2 * c + beta * kl`` with ``c = 1`` (``recon="sum"``,
    eq. 12) or ``1 / D`` (``"mean"``); ``method``: ``"max"`` (max ELBO sampling, eq. 9:
    the sample with the lowest ``L``, lowest index on ties), ``"avg"`` (eq. 7),
    ``"iwae"`` (Burda et al.'s bound ``-log mean_j exp(-L)``) or ``"softmin"`` (the
    paper's public code's "iwae": ``sum_j softmax(-L)_j L_j``, weights not detached);
    see :mod:`vsc_kernels._elbo`. The ``(B, J, D)`` reconstructions are never
    materialized.

    Args:
        x: data ``(B, D)``.
        z: codes ``(B, J, d)``, e.g. ``threshold_sample(mu, logb, lam, num_samples=J)``.
        A: dictionary ``(D, d)``.
        kl: ``None``, ``(B,)`` (one KL per row, shared by its samples) or ``(B, J)``.
        beta: KL weight ``>= 0``.
        method: ``"max"``, ``"avg"``, ``"iwae"`` or ``"softmin"``.
        recon: ``"sum"`` or ``"mean"`` over the ``D`` features.
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"``; default
            ``$VSC_KERNELS_BACKEND`` or by device.

    Returns:
        :class:`ElboResult` ``(loss, per_sample (B, J), index (B,), weights (B, J))``.
        Math in float32 (float64 for float64 inputs); ``x``, ``z`` and ``A`` are promoted
        to one dtype, which the float outputs have. Only ``loss`` is differentiable (with
        respect to ``x``, ``z``, ``A`` and ``kl``).
    """
    kl, beta = _check_arguments(x, z, A, kl, beta, method, recon)
    chosen = (resolve_backend(backend, x.device.type) if torch.compiler.is_compiling()
              else resolve_backend_cached(backend, x.device.type))
    dtype = x.dtype
    if z.dtype != dtype or A.dtype != dtype:
        dtype = torch.promote_types(torch.promote_types(x.dtype, z.dtype), A.dtype)
        x, z, A = x.to(dtype), z.to(dtype), A.to(dtype)
    if chosen == "reference":
        # Float32 math under autocast too (autocast would run z @ A^T in low precision).
        with torch.autocast(x.device.type, enabled=False):
            loss, per_sample, index, weights = reference.linear_elbo(x, z, A, kl, beta, method,
                                                                     recon)
    else:
        loss, per_sample, index, weights = _run(x, z, A, kl, beta, method, recon, chosen)
    if loss.dtype != dtype:
        loss, per_sample, weights = loss.to(dtype), per_sample.to(dtype), weights.to(dtype)
    return ElboResult(loss, per_sample, index, weights)
