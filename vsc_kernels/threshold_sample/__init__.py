"""``threshold_sample``: reparameterized sample + shifted soft-threshold, fused.

One op (Fallah & Rozell 2022, section 3.2, Algorithm 1, Appendices A-C):
``s = mu + w * b * eps`` (Appendix B), ``z = T(s; lam, mu)`` (eq. 2), with the
straight-through backward of eq. (4), the exact subgradient (Table 2's
baseline), or the public code's variant. Noise is counter-based Philox from a
seed drawn from torch's generator; backward regenerates it instead of storing it.

Layers (as in Liger-Kernel): ``reference.py`` (plain PyTorch, the oracle),
``triton_kernels.py`` (CUDA), ``cpp_backend.py`` -> ``csrc/`` (CPU), and this
module: argument checks, the ``torch.library`` custom op with its autograd and
fake kernels, and the public function.
"""

from __future__ import annotations

import math

import torch

from .. import _checks
from .._dispatch import backend_module, resolve_backend, resolve_backend_cached
from .._philox import draw_seed
from . import reference
from .reference import BASES, ESTIMATORS, compute_dtype

__all__ = ["threshold_sample", "kl_divergence"]

_OP = "threshold_sample"


# --------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------

@torch.library.custom_op("vsc_kernels::threshold_sample", mutates_args=())
def _threshold_sample_op(mu: torch.Tensor, logb: torch.Tensor, lam: torch.Tensor | None,
                         lam_value: float, seed: torch.Tensor, num_samples: int, base: str,
                         estimator: str, warmup: float, return_kl: bool, prior_scale: float,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    impl = backend_module(_OP, backend)
    z, kl = impl.threshold_sample_forward(mu, logb, lam, lam_value, seed, num_samples, base,
                                          warmup, return_kl, prior_scale)
    if kl is None:
        kl = mu.new_empty((0,), dtype=compute_dtype(mu.dtype))
    return z, kl


@_threshold_sample_op.register_fake
def _(mu, logb, lam, lam_value, seed, num_samples, base, estimator, warmup, return_kl,
      prior_scale, backend):
    rows, d = mu.shape
    z = mu.new_empty((rows, num_samples, d))
    kl = mu.new_empty((rows if return_kl else 0,), dtype=compute_dtype(mu.dtype))
    return z, kl


@torch.library.custom_op("vsc_kernels::threshold_sample_backward", mutates_args=())
def _threshold_sample_backward_op(grad_z: torch.Tensor, grad_kl: torch.Tensor | None,
                                  mu: torch.Tensor, logb: torch.Tensor,
                                  lam: torch.Tensor | None, lam_value: float, seed: torch.Tensor,
                                  num_samples: int, base: str, estimator: str, warmup: float,
                                  prior_scale: float, lam_requires_grad: bool,
                                  backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = backend_module(_OP, backend)
    grad_mu, grad_logb, grad_lam = impl.threshold_sample_backward(
        grad_z, grad_kl, mu, logb, lam, lam_value, seed, num_samples, base, estimator, warmup,
        prior_scale, lam_requires_grad)
    if grad_lam is None:
        grad_lam = mu.new_empty((0,), dtype=compute_dtype(mu.dtype))
    return grad_mu, grad_logb, grad_lam


@_threshold_sample_backward_op.register_fake
def _(grad_z, grad_kl, mu, logb, lam, lam_value, seed, num_samples, base, estimator, warmup,
      prior_scale, lam_requires_grad, backend):
    rows, d = mu.shape
    lam_shape = (rows, num_samples, d) if lam_requires_grad else (0,)
    return (mu.new_empty((rows, d)), mu.new_empty((rows, d)),
            mu.new_empty(lam_shape, dtype=compute_dtype(mu.dtype)))


def _setup_context(ctx, inputs, output):
    (mu, logb, lam, lam_value, seed, num_samples, base, estimator, warmup, return_kl,
     prior_scale, backend) = inputs
    ctx.save_for_backward(mu, logb, lam, seed)
    ctx.params = (lam_value, num_samples, base, estimator, warmup, prior_scale, backend)
    ctx.return_kl = return_kl


def _backward(ctx, grad_z, grad_kl):
    mu, logb, lam, seed = ctx.saved_tensors
    lam_value, num_samples, base, estimator, warmup, prior_scale, backend = ctx.params
    lam_requires_grad = lam is not None and ctx.needs_input_grad[2]
    if not ctx.return_kl:
        grad_kl = None
    grad_mu, grad_logb, grad_lam = _threshold_sample_backward_op(
        grad_z, grad_kl, mu, logb, lam, lam_value, seed, num_samples, base, estimator, warmup,
        prior_scale, lam_requires_grad, backend)
    grad_lam = grad_lam.to(lam.dtype) if lam_requires_grad else None
    return grad_mu, grad_logb, grad_lam, None, None, None, None, None, None, None, None, None


_threshold_sample_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# Eager path: the same kernels without the custom op's dispatch layers
# --------------------------------------------------------------------------------------

class _ThresholdSampleFunction(torch.autograd.Function):
    """Eager autograd for the kernels (what the custom op's autograd does, minus the
    ``torch.library`` dispatch, which costs tens of microseconds per call). Used when
    not compiling; under ``torch.compile`` the custom op above is traced instead.
    ``config``: ``(lam_value, num_samples, base, estimator, warmup, return_kl,
    prior_scale, impl)`` in one argument (``apply`` pays per argument)."""

    @staticmethod
    def forward(ctx, mu, logb, lam, seed, config):
        lam_value, num_samples, base, _, warmup, return_kl, prior_scale, impl = config
        z, kl = impl.threshold_sample_forward(mu, logb, lam, lam_value, seed, num_samples, base,
                                              warmup, return_kl, prior_scale)
        ctx.save_for_backward(mu, logb, lam, seed)
        ctx.config = config
        return z, kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_z, grad_kl):
        mu, logb, lam, seed = ctx.saved_tensors
        lam_value, num_samples, base, estimator, warmup, _, prior_scale, impl = ctx.config
        lam_requires_grad = lam is not None and ctx.needs_input_grad[2]
        if grad_z is None:
            grad_z = mu.new_zeros(()).expand(mu.shape[0], num_samples, mu.shape[1])
        grad_mu, grad_logb, grad_lam = impl.threshold_sample_backward(
            grad_z, grad_kl, mu, logb, lam, lam_value, seed, num_samples, base, estimator,
            warmup, prior_scale, lam_requires_grad)
        if lam_requires_grad:
            return grad_mu, grad_logb, grad_lam.to(lam.dtype), None, None
        return grad_mu, grad_logb, None, None, None


def _run_kernels(mu2, logb2, lam_tensor, lam_value, seed, J, base, estimator, warmup, return_kl,
                 prior_scale, backend):
    """``(z (M, J, d), kl (M,) or empty/None)`` from a kernel backend, eager or traced."""
    if torch.compiler.is_compiling():
        return _threshold_sample_op(mu2, logb2, lam_tensor, lam_value, seed, J, base, estimator,
                                    warmup, return_kl, prior_scale, backend)
    impl = backend_module(_OP, backend)
    if torch.is_grad_enabled() and (mu2.requires_grad or logb2.requires_grad or (
            lam_tensor is not None and lam_tensor.requires_grad)):
        return _ThresholdSampleFunction.apply(
            mu2, logb2, lam_tensor, seed,
            (lam_value, J, base, estimator, warmup, return_kl, prior_scale, impl))
    return impl.threshold_sample_forward(mu2, logb2, lam_tensor, lam_value, seed, J, base,
                                         warmup, return_kl, prior_scale)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def _check_arguments(mu, logb, lam, num_samples, base, estimator, warmup, generator,
                     prior_scale):
    _checks.float_tensor("mu", mu)
    _checks.float_tensor("logb", logb)
    if mu.dim() == 0:
        raise ValueError("mu must have at least one dimension (the feature axis d)")
    if logb.shape != mu.shape:
        raise ValueError(f"logb must have mu's shape {tuple(mu.shape)}, got {tuple(logb.shape)}")
    _checks.same_device("logb", logb, "mu", mu)
    num_samples = _checks.optional_count("num_samples", num_samples)
    _checks.choice("base", base, BASES)
    _checks.choice("estimator", estimator, ESTIMATORS)
    warmup = _checks.real_number("warmup", warmup, minimum=0.0)
    prior_scale = _checks.real_number("prior_scale", prior_scale, positive=True)
    _checks.generator("generator", generator)
    if num_samples is None:
        out_shape = tuple(mu.shape)
    else:
        out_shape = tuple(mu.shape[:-1]) + (num_samples, mu.shape[-1])
    if isinstance(lam, torch.Tensor):
        _checks.float_tensor("lam", lam)
        _checks.same_device("lam", lam, "mu", mu)
        _checks.broadcastable("lam", lam, out_shape, "the output shape")
    else:
        lam = _checks.real_number("lam", lam, minimum=0.0)
    return num_samples, warmup, prior_scale, out_shape, lam


def threshold_sample(mu: torch.Tensor, logb: torch.Tensor, lam, *, num_samples: int | None = None,
                     base: str = "laplace", estimator: str = "straight", warmup: float = 1.0,
                     generator: torch.Generator | None = None, return_kl: bool = False,
                     prior_scale: float = 1.0, backend: str | None = None):
    """Thresholded reparameterized samples ``z = T(mu + w * b * eps; lam, mu)``.

    Args:
        mu: shift of the base distribution, shape ``(..., d)``; float16/bfloat16/float32
            (float64 for gradient checks). Math is float32; ``z`` has ``mu``'s dtype
            (promoted with ``logb``'s).
        logb: ``log b`` (Laplace scale) for ``base="laplace"``, or the log-variance
            ``2 log sigma`` for ``base="gaussian"`` (Appendix B); ``mu``'s shape.
        lam: threshold ``>= 0``: a float, or a tensor broadcastable to the output
            (per feature ``(d,)``, per row, or per sample ``(..., J, d)``, e.g. a Gamma
            ``rsample`` when the threshold is learned; its gradient is then returned).
        num_samples: ``J``; the output is ``(..., J, d)`` with independent noise per
            sample (``mu``/``logb`` are never copied J times). ``None``: ``mu``'s shape.
        base: ``"laplace"`` (inverse CDF with the log's argument clamped at 1e-6) or
            ``"gaussian"``.
        estimator: ``"straight"`` -- eq. (4), ``z~ = s + T(sg[s]) - sg[s]``: the
            gradient reaches ``mu``/``logb`` at every entry, zero or not;
            ``"subgradient"`` -- the exact a.e. gradient of ``T(s)`` (zero where ``z``
            is zero; the paper's Table 2 baseline); ``"straight_shift"`` -- as
            ``"straight"`` but the shift ``mu`` added to active entries keeps its
            gradient, ``grad_mu = grad_z * (1 + [z != 0])`` (the paper's public code).
        warmup: ``w``, multiplies the scale (Appendix B warms it from 0.1 to 1).
        generator: source of the Philox seed; default: torch's default generator of
            ``mu``'s device, so ``torch.manual_seed`` reproduces results.
        return_kl: also return ``kl_divergence(mu, logb, base, prior_scale)`` summed
            over the last axis (shape ``mu.shape[:-1]``), computed in the same kernel.
        prior_scale: the prior's ``b0`` (Laplace) or variance ``sigma0^2`` (Gaussian).
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"``; default
            ``$VSC_KERNELS_BACKEND`` or by device.

    Returns:
        ``z``, or ``(z, kl)`` with ``return_kl=True``.
    """
    num_samples, warmup, prior_scale, out_shape, lam = _check_arguments(
        mu, logb, lam, num_samples, base, estimator, warmup, generator, prior_scale)
    chosen = (resolve_backend(backend, mu.device.type) if torch.compiler.is_compiling()
              else resolve_backend_cached(backend, mu.device.type))
    if isinstance(lam, torch.Tensor):
        # Non-finite policy: a negative, NaN or inf threshold is an error where checking
        # costs no host synchronisation: the C++ kernels check while they read it, the
        # reference here; the Triton kernels (CUDA) write NaN where it applies instead,
        # unless $VSC_KERNELS_CHECK_VALUES=1 asks for this check (one sync).
        if chosen == "reference" or (chosen == "triton" and _checks.value_checks_requested()):
            _checks.finite_non_negative_values("lam", lam)
    if mu.dtype != logb.dtype:
        dtype = torch.promote_types(mu.dtype, logb.dtype)
        mu, logb = mu.to(dtype), logb.to(dtype)
    dtype = mu.dtype
    seed = draw_seed(mu.device, generator)

    if chosen == "reference":
        return reference.threshold_sample(
            mu, logb, lam, seed=seed, num_samples=num_samples, base=base, estimator=estimator,
            warmup=warmup, return_kl=return_kl, prior_scale=prior_scale)

    d = mu.shape[-1]
    J = 1 if num_samples is None else num_samples
    if mu.dim() == 2:  # the common (rows, d) case needs no reshape
        rows = mu.shape[0]
        mu2, logb2 = mu, logb
    else:
        rows = math.prod(mu.shape[:-1])
        mu2, logb2 = mu.reshape(rows, d), logb.reshape(rows, d)
    lam_tensor, lam_value = None, 0.0
    if isinstance(lam, torch.Tensor):
        lam_tensor = lam.expand(out_shape).reshape(rows, J, d)
    else:
        lam_value = lam
    z, kl = _run_kernels(mu2, logb2, lam_tensor, lam_value, seed, J, base, estimator, warmup,
                         return_kl, prior_scale, chosen)
    if num_samples is None or mu.dim() != 2:
        z = z.reshape(out_shape)
    if not return_kl:
        return z
    if kl.dtype != dtype:
        kl = kl.to(dtype)
    return z, kl.reshape(mu.shape[:-1])


def kl_divergence(mu: torch.Tensor, logb: torch.Tensor, *, base: str = "laplace",
                  prior_scale: float = 1.0) -> torch.Tensor:
    """Per-element KL of the base distribution against its prior (Appendix B).

    Laplace: ``|mu|/b0 + b exp(-|mu|/b)/b0 + log(b0/b) - 1`` (Meyer, 2021) with
    ``b = exp(logb)``, ``b0 = prior_scale``. Gaussian (``logb`` the log-variance):
    ``(mu^2 + sigma^2) / (2 sigma0^2) + log(sigma0/sigma) - 1/2`` with the prior
    variance ``sigma0^2 = prior_scale``. Computed in float32 (float64 for float64
    inputs) and returned in the inputs' dtype; differentiable.
    """
    _checks.float_tensor("mu", mu)
    _checks.float_tensor("logb", logb)
    if logb.shape != mu.shape:
        raise ValueError(f"logb must have mu's shape {tuple(mu.shape)}, got {tuple(logb.shape)}")
    _checks.same_device("logb", logb, "mu", mu)
    _checks.choice("base", base, BASES)
    prior_scale = _checks.real_number("prior_scale", prior_scale, positive=True)
    dtype = torch.promote_types(mu.dtype, logb.dtype)
    work = compute_dtype(dtype)
    return reference.kl_divergence(mu.to(work), logb.to(work), base, prior_scale).to(dtype)
