"""Batch normalization for the DNN generator: statistics shared across processes on any
backend, and recorded/replayed batch statistics for the selected-sample decode.

:class:`BatchNorm2d` is an ``nn.BatchNorm2d`` (same parameters, buffers and state-dict
keys) whose training-mode forward can

* **share the batch statistics across processes** (``process_group`` set by
  :func:`share_statistics`): the per-channel mean, then the per-channel mean squared
  deviation, are all-reduced with ``torch.distributed.nn.functional.all_reduce``, which is
  differentiable, so N processes with a global batch G normalize, update the running
  statistics and back-propagate exactly as one process with batch G (the gradient through
  the statistics reaches every process's inputs). PyTorch's ``nn.SyncBatchNorm`` does the
  same but refuses CPU modules ("SyncBatchNorm layers only work with GPU modules"); this
  one runs on gloo as well as NCCL.
* **record** the batch statistics it normalized with (``recording(model)``) and
  **replay** them (``replaying(model)``): a later forward normalizes with the recorded
  statistics and leaves the running statistics alone, and back-propagates as batch norm
  over the replayed batch itself (see :meth:`BatchNorm2d._replay`). The opt-in
  ``decode="selected"`` of :mod:`vsc.dnn.objective` decodes all ``B*J`` samples without
  gradients while recording, then only the ``B`` selected ones with gradients while
  replaying.

Statistics are computed in float32 (float64 for float64 input) whatever the input dtype
(autocast); the output has the input's dtype, like ``nn.BatchNorm2d`` under autocast.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def _work(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 if it is (gradient checks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class BatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.process_group = None      # set by share_statistics()
        self.mode: str | None = None   # None, "record" or "replay"
        self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"BatchNorm2d expects (N, C, H, W) input, got {tuple(x.shape)}")
        if not self.training or (self.process_group is None and self.mode is None):
            return super().forward(x)
        if self.mode == "replay":
            if self.recorded is None:
                raise RuntimeError("BatchNorm2d: replay without recorded statistics "
                                   "(decode with recording() first)")
            return self._replay(x)
        else:
            mean, var, count = self._batch_statistics(x)
            if count < 2:
                raise ValueError("BatchNorm2d: expected more than 1 value per channel when "
                                 f"training, got input of shape {tuple(x.shape)}")
            self._update_running_statistics(mean.detach(), var.detach(), count)
            if self.mode == "record":
                self.recorded = (mean.detach(), var.detach())
        # Eval-mode batch_norm with the given statistics: y = (x - mean) / sqrt(var + eps)
        # * weight + bias, differentiable in mean and var (not running buffers here).
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.weight is not None:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        out = _work(x) * scale[:, None, None] + shift[:, None, None]
        return out.to(x.dtype)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize with the recorded statistics; back-propagate as batch norm over this
        (the replayed) batch: the value is ``(x - mean_rec) / std_rec``, the gradient that
        of ``(x - mean_x) / std_x`` with ``x``'s own statistics (over every process), so
        that the directions batch norm cancels (a shift or a scale of a channel) get no
        gradient, as with batch norm over any batch."""
        mean, var = self.recorded
        xw = _work(x)
        fixed = (xw - mean[:, None, None]) * torch.rsqrt(var + self.eps)[:, None, None]
        own_mean, own_var, _ = self._batch_statistics(x)
        own = ((xw - own_mean[:, None, None])
               * torch.rsqrt(own_var + self.eps)[:, None, None])
        normalized = own + (fixed - own).detach()
        if self.weight is not None:
            normalized = normalized * self.weight[:, None, None] + self.bias[:, None, None]
        return normalized.to(x.dtype)

    def _batch_statistics(self, x: torch.Tensor):
        """``(mean, biased var, count)`` over (N, H, W), in float32, over every process of
        ``process_group`` (two all-reduces: the mean, then the squared deviations)."""
        xf = _work(x)
        local = xf.shape[0] * xf.shape[2] * xf.shape[3]
        if self.process_group is None:
            var, mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
            return mean, var, local
        from torch.distributed.nn.functional import all_reduce

        count_t = torch.tensor([float(local)], device=x.device, dtype=xf.dtype)
        sums = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count_t]),
                          group=self.process_group)
        count = int(sums[-1].item())
        mean = sums[:-1] / count
        centered = xf - mean[:, None, None]
        var = all_reduce(centered.square().sum(dim=(0, 2, 3)), group=self.process_group) / count
        return mean, var, count

    @torch.no_grad()
    def _update_running_statistics(self, mean, var, count) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked.add_(1)
        momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                    else self.momentum)
        unbiased = var * (count / (count - 1))
        self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype),
                                                 alpha=momentum)


def batch_norms(module: nn.Module) -> list[BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, BatchNorm2d)]


def share_statistics(module: nn.Module, process_group) -> None:
    """Make every :class:`BatchNorm2d` in ``module`` normalize with statistics over all
    processes of ``process_group`` (``None``: the default group)."""
    import torch.distributed as dist

    group = process_group if process_group is not None else dist.group.WORLD
    for bn in batch_norms(module):
        bn.process_group = group


@contextmanager
def _mode(module: nn.Module, mode: str):
    layers = batch_norms(module)
    for bn in layers:
        bn.mode = mode
    try:
        yield
    finally:
        for bn in layers:
            bn.mode = None


def recording(module: nn.Module):
    """Within this context, training-mode forwards of ``module`` record their batch
    statistics (running statistics update as usual)."""
    return _mode(module, "record")


def replaying(module: nn.Module):
    """Within this context, training-mode forwards normalize with the statistics recorded
    last, as constants, and do not touch the running statistics."""
    return _mode(module, "replay")


def clear_recorded(module: nn.Module) -> None:
    for bn in batch_norms(module):
        bn.recorded = None
