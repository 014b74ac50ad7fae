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
  statistics as constants and leaves the running statistics alone. The trainer decodes
  all ``B*J`` samples without gradients while recording, selects one sample per input,
  and decodes only the ``B`` selected codes again with gradients while replaying, so the
  selected reconstructions are exactly the ones the selection saw (see
  :mod:`vsc.dnn.objective`).

Statistics are computed in float32 whatever the input dtype (autocast); the output has
the input's dtype, like ``nn.BatchNorm2d`` under autocast.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


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
            mean, var = self.recorded
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
        out = x.float() * scale[:, None, None] + shift[:, None, None]
        return out.to(x.dtype)

    def _batch_statistics(self, x: torch.Tensor):
        """``(mean, biased var, count)`` over (N, H, W), in float32, over every process of
        ``process_group`` (two all-reduces: the mean, then the squared deviations)."""
        xf = x.float()
        local = xf.shape[0] * xf.shape[2] * xf.shape[3]
        if self.process_group is None:
            var, mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
            return mean, var, local
        from torch.distributed.nn.functional import all_reduce

        count_t = torch.tensor([float(local)], device=x.device)
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
