"""Per-sample ELBO terms and the selection over the J samples (section 3.3).

Shared by :mod:`vsc_kernels.linear_elbo` and :mod:`vsc_kernels.elbo_select`: both
reduce a per-sample reconstruction error ``E[b, j]`` in a fused kernel and then
call :func:`per_sample_loss` and :func:`select_samples` on the small ``(B, J)``
matrix, in float32.

Per-sample loss (the negative of eq. 6 with the Gaussian likelihood of eq. 12)::

    L[b, j] = E[b, j] * c + beta * kl[b, j]      c = 1 (recon="sum") or 1/D ("mean")

Selection over ``j`` (the row objective ``l_b``; the returned scalar is its mean
over rows):

* ``"max"``  -- eq. (9), max ELBO: ``l_b = min_j L[b, j]``; ties go to the lowest
  index; ``weights`` is the one-hot of the selected sample.
* ``"avg"``  -- eq. (7): ``l_b = mean_j L[b, j]``; ``weights = 1 / J``.
* ``"iwae"`` -- the importance-weighted bound of Burda et al. (2016) with ``K = J``:
  ``l_b = -log mean_j exp(-L[b, j])``, whose gradient is ``w = softmax_j(-L[b, :])``,
  the ``weights``. This is *not* what the paper's public code calls "iwae".
* ``"softmin"`` -- the paper's public code's ``sample_method="iwae"``
  (``model/reparameterization.py``, ``compute_loss``): the softmin-weighted sum
  ``l_b = sum_j w_j L[b, j]`` with ``w = softmax_j(-L[b, :])`` *not* detached, so
  ``d l_b / d L[b, k] = w_k (1 - L[b, k] + l_b)``, the ``weights`` (they sum to 1 but
  may be negative). Checked against that function run on the same inputs
  (tests/test_public_code_conventions.py).

In every case ``weights[b, j] = d l_b / d L[b, j]``, so the backward pass of both
ops is ``grad L = grad_loss * weights / B``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import _checks

METHODS = ("max", "avg", "iwae", "softmin")
RECONS = ("sum", "mean")


class ElboResult(NamedTuple):
    """Output of :func:`vsc_kernels.linear_elbo` and :func:`vsc_kernels.elbo_select`.

    ``loss`` (scalar, differentiable): mean over rows of the selected per-row
    objective. ``per_sample`` ``(B, J)``: ``L[b, j]``. ``index`` ``(B,)`` int64: the
    sample with the lowest loss (lowest index on ties), for every method.
    ``weights`` ``(B, J)``: ``d l_b / d L[b, j]``. Only ``loss`` carries gradients.
    """

    loss: torch.Tensor
    per_sample: torch.Tensor
    index: torch.Tensor
    weights: torch.Tensor


def check_options(beta, method: str, recon: str) -> float:
    beta = _checks.real_number("beta", beta, minimum=0.0)
    _checks.choice("method", method, METHODS)
    _checks.choice("recon", recon, RECONS)
    return beta


def check_kl(kl, batch: int, num_samples: int, reference: torch.Tensor):
    """``kl`` is None, ``(B,)`` (one KL per row, shared by its samples) or ``(B, J)``."""
    if kl is None:
        return None
    _checks.float_tensor("kl", kl)
    _checks.same_device("kl", kl, "x", reference)
    if tuple(kl.shape) not in ((batch,), (batch, num_samples)):
        raise ValueError(f"kl must have shape ({batch},) or ({batch}, {num_samples}), "
                         f"got {tuple(kl.shape)}")
    return kl


def recon_scale(recon: str, features: int) -> float:
    return 1.0 if recon == "sum" else 1.0 / max(features, 1)


def per_sample_loss(sq_err: torch.Tensor, kl: torch.Tensor | None, beta: float,
                    scale: float) -> torch.Tensor:
    """``L = E * scale + beta * kl`` in float32 (float64 if ``sq_err`` is)."""
    loss = sq_err * scale
    if kl is not None:
        kl = kl.to(loss.dtype)
        loss = loss + beta * (kl[:, None] if kl.dim() == 1 else kl)
    return loss


def select_samples(per_sample: torch.Tensor, method: str):
    """``(row_loss (B,), index (B,), weights (B, J))`` for ``per_sample`` ``(B, J)``."""
    batch, num_samples = per_sample.shape
    if num_samples == 0:
        raise ValueError("z must hold at least one sample (J >= 1)")
    # argmin returns the first minimal index, so ties resolve to the lowest j.
    index = torch.argmin(per_sample, dim=1) if batch else per_sample.new_zeros(0, dtype=torch.long)
    if method == "max":
        row_loss = per_sample.gather(1, index[:, None]).squeeze(1)
        weights = torch.zeros_like(per_sample).scatter_(1, index[:, None], 1.0)
    elif method == "avg":
        row_loss = per_sample.mean(dim=1)
        weights = torch.full_like(per_sample, 1.0 / num_samples)
    elif method == "iwae":
        row_loss = math.log(num_samples) - torch.logsumexp(-per_sample, dim=1)
        weights = torch.softmax(-per_sample, dim=1)
    else:
        # softmin: autograd through the softmax gives the reference's gradient; the
        # weights are that gradient in closed form, w_k (1 - L_k + sum_j w_j L_j).
        w = torch.softmax(-per_sample, dim=1)
        row_loss = (w * per_sample).sum(dim=1)
        weights = w * (1.0 - (per_sample - row_loss[:, None]))
    return row_loss, index, weights


def mean_over_rows(row_loss: torch.Tensor) -> torch.Tensor:
    """Mean over rows; 0 for an empty batch (instead of NaN)."""
    if row_loss.numel() == 0:
        return row_loss.new_zeros(())
    return row_loss.mean()


def kl_gradient(grad_per_sample: torch.Tensor, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """Gradient of ``kl`` from ``grad L`` ``(B, J)``: summed over J for a per-row kl."""
    grad = beta * grad_per_sample
    if kl.dim() == 1:
        grad = grad.sum(dim=1)
    return grad.to(kl.dtype)
