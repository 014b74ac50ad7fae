"""``elbo_select``: the ELBO of a DNN generator's samples, reduced and selected in one pass.

With a DNN generator (Fallah & Rozell 2022, section 3.3, Algorithm 1) the decoder is a
network, so the samples ``x_hat (B, J, ...)`` come out of it; this op fuses what is
left: the per-sample squared error ``E[b, j] = sum_f (x_hat[b, j, f] - x[b, f])^2`` in
one read of ``x_hat``, the KL term, and the selection over the ``J`` samples (max ELBO,
eq. 9; average, eq. 7; the IWAE bound; the public code's softmin) from
:mod:`vsc_kernels._elbo`. The backward pass writes ``grad x_hat = 2 g (x_hat - x)``
recomputing ``x_hat - x`` from the saved inputs (nothing of size ``B J F`` is kept),
and under ``method="max"`` reads only the selected sample of each row.

Layers (as in Liger-Kernel): ``reference.py`` (plain PyTorch, the oracle and the
backend contract), ``triton_kernels.py`` (CUDA), ``cpp_backend.py`` -> ``csrc/`` (CPU),
and this module: argument checks, the ``torch.library`` custom ops with their autograd
and fake kernels, and the public function.
"""

from __future__ import annotations

import math

import torch

from .. import _checks, _elbo
from .._dispatch import backend_module, resolve_backend, resolve_backend_cached
from .._elbo import ElboResult
from .._precision import compute_dtype
from . import reference

__all__ = ["elbo_select", "ElboResult"]

_OP = "elbo_select"


# --------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------

def _work_dtype(x, x_hat, kl):
    return compute_dtype(reference.result_dtype(x, x_hat, kl))


def _forward(x, x_hat, kl, beta, method, recon, impl):
    """``x (B, F)``, ``x_hat (B, J, F)``; returns ``loss, per_sample, index, weights`` in the
    compute dtype (the public function casts them)."""
    if method in getattr(impl, "FUSED_METHODS", ()):
        return impl.fused_forward(x, x_hat, kl, beta, _elbo.recon_scale(recon, x_hat.shape[2]),
                                  method)
    sq_err = impl.squared_error(x, x_hat)
    work = _work_dtype(x, x_hat, kl)
    if sq_err.dtype != work:
        sq_err = sq_err.to(work)
    per_sample = _elbo.per_sample_loss(sq_err, kl, beta, _elbo.recon_scale(recon, x_hat.shape[2]))
    row_loss, index, weights = _elbo.select_samples(per_sample, method)
    return _elbo.mean_over_rows(row_loss), per_sample, index, weights


@torch.library.custom_op("vsc_kernels::elbo_select", mutates_args=())
def _elbo_select_op(x: torch.Tensor, x_hat: torch.Tensor, kl: torch.Tensor | None, beta: float,
                    method: str, recon: str,
                    backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x (B, F)``, ``x_hat (B, J, F)``; returns ``loss, per_sample, index, weights`` in the
    compute dtype (the public function casts them)."""
    return _forward(x, x_hat, kl, beta, method, recon, backend_module(_OP, backend))


@_elbo_select_op.register_fake
def _(x, x_hat, kl, beta, method, recon, backend):
    B, J = x_hat.shape[:2]
    work = _work_dtype(x, x_hat, kl)
    return (x_hat.new_empty((), dtype=work), x_hat.new_empty((B, J), dtype=work),
            x_hat.new_empty((B,), dtype=torch.long), x_hat.new_empty((B, J), dtype=work))


@torch.library.custom_op("vsc_kernels::elbo_select_backward", mutates_args=())
def _elbo_select_backward_op(grad_sq_err: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor,
                             need_x: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x_hat, grad_x = backend_module(_OP, backend).elbo_select_backward(
        grad_sq_err, x, x_hat, need_x)
    if grad_x is None:
        grad_x = x.new_empty((0,))
    return grad_x_hat, grad_x


@_elbo_select_backward_op.register_fake
def _(grad_sq_err, x, x_hat, need_x, backend):
    return x_hat.new_empty(x_hat.shape), x.new_empty(x.shape if need_x else (0,))


def _setup_context(ctx, inputs, output):
    x, x_hat, kl, beta, method, recon, backend = inputs
    _, per_sample, index, weights = output
    ctx.mark_non_differentiable(per_sample, index, weights)
    # x and x_hat are the caller's tensors (no copy); weights is (B, J).
    ctx.save_for_backward(x, x_hat, kl, weights)
    ctx.params = (beta, recon, backend)


def _gradients(ctx, grad_loss, x, x_hat, kl, weights, beta, recon, backward_fn):
    """``(grad_x, grad_x_hat, grad_kl)``; ``backward_fn`` is the backend's (or the custom
    op's) ``elbo_select_backward``."""
    B, J, F = x_hat.shape
    # d loss / d L[b, j] = weights[b, j] / B (the mean over rows of the row objectives),
    # d L[b, j] / d E[b, j] = c (recon_scale): the scalars first, so that the (B, J)
    # weights are multiplied once (this glue is most of a small call's backward).
    grad_x = grad_x_hat = grad_kl = None
    need_x, need_x_hat = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_loss = grad_loss.to(weights.dtype)
    if need_x or need_x_hat:
        scale = _elbo.recon_scale(recon, F) / max(B, 1)
        grad_sq_err = (weights * (grad_loss * scale)).to(reference.work_dtype(x, x_hat))
        grad_x_hat, grad_x = backward_fn(grad_sq_err.contiguous(), x, x_hat, bool(need_x))
        grad_x_hat = grad_x_hat if need_x_hat else None
        grad_x = grad_x if need_x else None
    if kl is not None and ctx.needs_input_grad[2]:
        grad_kl = _elbo.kl_gradient(weights * (grad_loss / max(B, 1)), kl, beta)
    return grad_x, grad_x_hat, grad_kl


def _backward(ctx, grad_loss, _grad_per_sample, _grad_index, _grad_weights):
    x, x_hat, kl, weights = ctx.saved_tensors
    beta, recon, backend = ctx.params

    def backward_fn(grad_sq_err, x, x_hat, need_x):
        return _elbo_select_backward_op(grad_sq_err, x, x_hat, need_x, backend)

    grads = _gradients(ctx, grad_loss, x, x_hat, kl, weights, beta, recon, backward_fn)
    return grads + (None, None, None, None)


_elbo_select_op.register_autograd(_backward, setup_context=_setup_context)


class _ElboSelectFunction(torch.autograd.Function):
    """Eager autograd calling the backend directly (no ``torch.library`` dispatch); under
    ``torch.compile`` the custom op above is traced instead. ``config``: ``(beta, method,
    recon, impl)``."""

    @staticmethod
    def forward(ctx, x, x_hat, kl, config):
        beta, method, recon, impl = config
        loss, per_sample, index, weights = _forward(x, x_hat, kl, beta, method, recon, impl)
        ctx.mark_non_differentiable(per_sample, index, weights)
        ctx.save_for_backward(x, x_hat, kl, weights)
        ctx.config = config
        return loss, per_sample, index, weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_per_sample, _grad_index, _grad_weights):
        x, x_hat, kl, weights = ctx.saved_tensors
        beta, _, recon, impl = ctx.config
        grads = _gradients(ctx, grad_loss, x, x_hat, kl, weights, beta, recon,
                           impl.elbo_select_backward)
        return grads + (None,)


def _run(x, x_hat, kl, beta, method, recon, backend):
    if torch.compiler.is_compiling():
        return _elbo_select_op(x, x_hat, kl, beta, method, recon, backend)
    impl = backend_module(_OP, backend)
    if torch.is_grad_enabled() and (x.requires_grad or x_hat.requires_grad or (
            kl is not None and kl.requires_grad)):
        return _ElboSelectFunction.apply(x, x_hat, kl, (beta, method, recon, impl))
    return _forward(x, x_hat, kl, beta, method, recon, impl)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def _check_arguments(x, x_hat, kl, beta, method, recon):
    _checks.float_tensor("x", x)
    _checks.float_tensor("x_hat", x_hat)
    if x_hat.dim() < 2:
        raise ValueError(f"x_hat must have shape (B, J, ...) (at least 2 dimensions), got "
                         f"{tuple(x_hat.shape)}")
    _checks.same_device("x_hat", x_hat, "x", x)
    B, J = x_hat.shape[:2]
    expected = (B,) + tuple(x_hat.shape[2:])
    if tuple(x.shape) != expected:
        raise ValueError(f"x must have shape (B, ...) = {expected} to match x_hat of shape "
                         f"{tuple(x_hat.shape)} (B, J, ...), got {tuple(x.shape)}")
    if J == 0:
        raise ValueError("x_hat must hold at least one sample: J = x_hat.shape[1] must be >= 1")
    beta = _elbo.check_options(beta, method, recon)
    kl = _elbo.check_kl(kl, B, J, x)
    return beta, kl


def elbo_select(x: torch.Tensor, x_hat: torch.Tensor, kl: torch.Tensor | None = None, *,
                beta: float = 1.0, method: str = "max", recon: str = "sum",
                backend: str | None = None) -> ElboResult:
    """Per-sample ELBO of decoded samples and its selection over the ``J`` samples.

    Args:
        x: data ``(B, ...)``.
        x_hat: decoded samples ``(B, J, ...)`` (``J >= 1``, the trailing shape of ``x``;
            ``F`` is the product of the trailing dims). Any strides: it is viewed as
            ``(B, J, F)`` (copied only if no such view exists) and read in place.
        kl: ``None``, ``(B,)`` (one KL per row, shared by its samples) or ``(B, J)``.
        beta: weight of the KL term, ``>= 0``.
        method: ``"max"`` (eq. 9: the sample with the lowest loss), ``"avg"`` (eq. 7),
            ``"iwae"`` (Burda et al.'s bound ``-log mean_j exp(-L[b, j])``) or
            ``"softmin"`` (the paper's public code's "iwae": ``sum_j w_j L[b, j]``,
            ``w = softmax_j(-L[b, :])`` not detached).
        recon: ``"sum"`` (``c = 1``) or ``"mean"`` (``c = 1 / F``) in
            ``L[b, j] = c E[b, j] + beta kl[b, j]``.
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"``; default
            ``$VSC_KERNELS_BACKEND`` or by device.

    Returns:
        :class:`ElboResult` ``(loss, per_sample (B, J), index (B,), weights (B, J))``;
        math in float32 (float64 for float64 inputs), outputs in the promoted dtype of
        ``x``, ``x_hat`` and ``kl`` (``index`` int64). Only ``loss`` is differentiable
        (with respect to ``x_hat``, ``x`` and ``kl``). An empty batch gives ``loss = 0``.
    """
    beta, kl = _check_arguments(x, x_hat, kl, beta, method, recon)
    chosen = (resolve_backend(backend, x_hat.device.type) if torch.compiler.is_compiling()
              else resolve_backend_cached(backend, x_hat.device.type))
    dtype = reference.result_dtype(x, x_hat, kl)
    B, J = x_hat.shape[:2]
    if x_hat.dim() == 3:
        F = x_hat.shape[2]
    else:
        F = math.prod(x_hat.shape[2:])
        x, x_hat = x.reshape(B, F), x_hat.reshape(B, J, F)
    loss, per_sample, index, weights = _run(x, x_hat, kl, beta, method, recon, chosen)
    if loss.dtype != dtype:
        loss, per_sample, weights = loss.to(dtype), per_sample.to(dtype), weights.to(dtype)
    return ElboResult(loss, per_sample.detach(), index, weights.detach())
