"""``fista``: batched FISTA for the lasso / sparse-coding problem, one solver call per batch.

The paper's MAP baseline (Table 1, first row), the solver behind its validation loss
(objective (10)), and the inner loop of classic dictionary learning. Every row of ``x`` is
an independent problem with its own stopping; the kernels work from ``G = A^T A`` and
``A^T x``, computed once. See ``reference.py`` for the algorithm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _checks
from .._dispatch import backend_module, resolve_backend
from .._precision import compute_dtype
from . import reference

__all__ = ["fista", "FistaResult"]

_OP = "fista"


class FistaResult(NamedTuple):
    codes: torch.Tensor      # (B, d), the input dtype
    n_iter: torch.Tensor     # (B,) int32, iterations run per row
    converged: torch.Tensor  # (B,) bool, stopped by the tolerance before max_iter


@torch.library.custom_op("vsc_kernels::fista", mutates_args=())
def _fista_op(gram: torch.Tensor, c: torch.Tensor, lam: torch.Tensor, z0: torch.Tensor,
              lipschitz: float, max_iter: int, tol: float, nonneg: bool,
              backend: str, A: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = backend_module(_OP, backend)
    if A is not None:  # products with A^T and A instead of the Gram matrix (d > 2 D)
        return impl.fista_solve(gram, c, lam, z0, lipschitz, max_iter, tol, nonneg, A=A)
    return impl.fista_solve(gram, c, lam, z0, lipschitz, max_iter, tol, nonneg)


@_fista_op.register_fake
def _(gram, c, lam, z0, lipschitz, max_iter, tol, nonneg, backend, A=None):
    B = c.shape[0]
    return (torch.empty_like(c), c.new_empty((B,), dtype=torch.int32),
            c.new_empty((B,), dtype=torch.bool))


def _check_arguments(x, A, lam, max_iter, tol, init, lipschitz):
    _checks.float_tensor("x", x)
    _checks.float_tensor("A", A)
    if x.dim() != 2:
        raise ValueError(f"x must be a (B, D) matrix, got shape {tuple(x.shape)}")
    if A.dim() != 2:
        raise ValueError(f"A must be a (D, d) dictionary, got shape {tuple(A.shape)}")
    if A.shape[0] != x.shape[1]:
        raise ValueError(f"A must have D = x.shape[1] = {x.shape[1]} rows, got A of shape "
                         f"{tuple(A.shape)}")
    _checks.same_device("A", A, "x", x)
    B, d = x.shape[0], A.shape[1]
    if isinstance(lam, torch.Tensor):
        _checks.float_tensor("lam", lam)
        _checks.same_device("lam", lam, "x", x)
        if lam.shape not in ((), (B,)):
            raise ValueError(f"lam must be a float or a per-row tensor of shape ({B},), got "
                             f"shape {tuple(lam.shape)}")
        _checks.finite_non_negative_values("lam", lam)
    else:
        lam = _checks.real_number("lam", lam, minimum=0.0)
    max_iter = _checks.optional_count("max_iter", max_iter, minimum=1)
    if max_iter is None:
        raise TypeError("max_iter must be an int, got None")
    tol = _checks.real_number("tol", tol, minimum=0.0)
    if init is not None:
        _checks.float_tensor("init", init)
        _checks.same_device("init", init, "x", x)
        if init.shape != (B, d):
            raise ValueError(f"init must have shape ({B}, {d}), got {tuple(init.shape)}")
    if lipschitz is not None:
        lipschitz = _checks.real_number("lipschitz", lipschitz, positive=True)
    return lam, max_iter, tol, lipschitz


@torch.no_grad()
def fista(x: torch.Tensor, A: torch.Tensor, lam, *, max_iter: int = 500, tol: float = 1e-3,
          init: torch.Tensor | None = None, lipschitz: float | None = None,
          nonneg: bool = False, backend: str | None = None) -> FistaResult:
    """Solve ``min_z 0.5 ||x_b - A z||^2 + lam_b ||z||_1`` for every row ``b`` of ``x``.

    Args:
        x: data ``(B, D)``.
        A: dictionary ``(D, d)`` (``x ~ A z``).
        lam: sparsity weight ``>= 0``: a float or a per-row tensor ``(B,)`` (the paper
            warms lambda up during dictionary learning, Appendix D).
        max_iter: iteration cap per row.
        tol: a row stops when ``||z_k - z_{k-1}|| <= tol ||z_k||``; stopped rows freeze.
        init: warm start ``(B, d)``; default zeros.
        lipschitz: ``L = ||A||_2^2``; default by power iteration on ``A^T A``.
        nonneg: constrain codes to be ``>= 0``.
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"``.

    Returns:
        ``FistaResult(codes (B, d), n_iter (B,) int32, converged (B,) bool)``; the codes
        are a MAP estimate and carry no autograd graph.
    """
    lam, max_iter, tol, lipschitz = _check_arguments(x, A, lam, max_iter, tol, init, lipschitz)
    if not isinstance(nonneg, bool):
        raise TypeError(f"nonneg must be a bool, got {type(nonneg).__name__}")
    chosen = resolve_backend(backend, x.device.type)
    dtype = torch.promote_types(x.dtype, A.dtype)
    work = compute_dtype(dtype)
    B, d = x.shape[0], A.shape[1]
    D = A.shape[0]
    A_w = A.to(work)
    # Non-finite policy: the codes are promised finite for finite data, so a NaN or inf in
    # the dictionary is an error (one read; fista synchronises anyway). NaN/inf in x or
    # init propagate to that row's codes, which then never count as converged.
    if A_w.numel() and not bool(torch.isfinite(A_w).all()):
        raise ValueError("A contains NaN or inf")
    # The C++ solver multiplies by A^T and A each iteration instead of the Gram matrix when
    # that is cheaper (2 B d D < B d^2 flops, i.e. d > 2 D).
    factored = chosen == "cpp" and d > 2 * D
    gram = A_w.new_empty((0, 0)) if factored else A_w.T @ A_w
    c = x.to(work) @ A_w
    if lipschitz is None:
        # ||A||_2^2, the largest eigenvalue of A^T A or of the smaller A A^T
        lipschitz = (float(reference.power_iteration(A_w @ A_w.T if factored else gram))
                     if d and D else 1.0)
    lam_rows = (lam.to(work).expand(B).contiguous() if isinstance(lam, torch.Tensor)
                else torch.full((B,), lam, dtype=work, device=x.device))
    z0 = (init.to(work).contiguous() if init is not None
          else torch.zeros(B, d, dtype=work, device=x.device))
    if chosen == "reference":
        codes, n_iter, converged = reference.fista_solve(gram, c, lam_rows, z0, lipschitz,
                                                         max_iter, tol, nonneg)
    else:
        codes, n_iter, converged = _fista_op(gram.contiguous(), c.contiguous(), lam_rows, z0,
                                             lipschitz, max_iter, tol, nonneg, chosen,
                                             A_w.contiguous() if factored else None)
    return FistaResult(codes.to(dtype), n_iter, converged)
