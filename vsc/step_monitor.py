"""What a training step reports, kept on the device and read by the host in batches.

A step that reads a value back to the host (``loss.item()``, ``if not
torch.isfinite(loss)``) makes the host wait for the device at every step, and a step
that waits cannot be captured in a CUDA graph (issue 11). :class:`StepMonitor` keeps on
the device what the loop needs from each step -- the epoch's sums of the loss, the % of
non-zero codes and objective (10) for the progress bar and the epoch record (summed in
step order whenever they are read, so a resumed run reports the same digits), and the
step's health -- and :meth:`StepMonitor.read` fetches all of it in one transfer. The
linear trainer reads every ``check_every`` steps, before every checkpoint and at the
end of every epoch.

Health. A step is healthy when its loss, its gradients and the parameters after its
update are all finite. :meth:`StepMonitor.update` applies the optimizers' step only
while this step and every earlier one are healthy, so the first unhealthy step freezes
the parameters and their optimizer buffers where the last healthy step left them:

* fused optimizers (the trainer's default) skip the whole update on the device when
  their ``found_inf`` tensor is non-zero (the flag ``torch.amp.GradScaler`` uses), set
  here from the loss and the gradients before the step: no copies. An update that
  overflowed with a finite loss and finite gradients cannot be taken back this way: it
  is named like the others, and the parameters keep it until the run stops (the trainer
  turns an error that the non-finite parameters cause before the next read into that
  read's message);
* other optimizers step, and the new values are kept with ``torch.where`` against
  copies taken before the update (this also undoes an overflowing update).

A buffer that the unhealthy step created, as SGD's momentum on step 0, is not undone (the
run stops at the next read anyway). So when the host reads the flag, the model is the one
before the first unhealthy step, the error can name that step and what was not finite,
and -- since checkpoints are written only after a read -- no checkpoint ever holds a
non-finite value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# Why a step is unhealthy, in the order they are checked.
LOSS, GRADIENT, UPDATE = 1, 2, 3
_WHAT = {GRADIENT: "a gradient is not finite", UPDATE: "an update overflowed the parameters"}

# Slots of StepMonitor.state (float64: steps are exact below 2**53).
_SUMS = slice(0, 3)        # loss, % non-zero, objective (10), summed over the epoch
_BAD = slice(3, 6)         # first unhealthy step (-1: none), its reason, its loss
_STEP = 6                  # the step counter, advanced on the device


@dataclass
class Reading:
    """What :meth:`StepMonitor.read` returns: the epoch's sums so far, the number of
    ``steps`` recorded since the previous read and, if a step was unhealthy, which one
    and why."""
    steps: int
    loss: float
    nonzero: float
    objective: float
    bad_step: int | None
    bad_what: str | None

    def raise_if_unhealthy(self, message) -> None:
        """``FloatingPointError(message(what, step))`` if a step was unhealthy."""
        if self.bad_step is not None:
            raise FloatingPointError(message(self.bad_what, self.bad_step))


class StepMonitor:
    """Per-step sums and health on ``device``; the step counter starts at ``step`` and
    the sums at ``sums`` (loss, % non-zero, objective: a resumed epoch's so far)."""

    def __init__(self, device: torch.device, step: int = 0, sums=(0.0, 0.0, 0.0)):
        self.state = torch.tensor([*map(float, sums), -1.0, 0.0, 0.0, float(step)],
                                  dtype=torch.float64, device=device)
        self.pending = 0           # steps since the last read (counted by the caller)

    def new_epoch(self) -> None:
        """Start the sums again from zero."""
        self.state[_SUMS] = 0.0

    def update(self, loss: torch.Tensor, optimizers, *, nonzero: torch.Tensor,
               objective: Callable[[], torch.Tensor] | None = None) -> None:
        """Step ``optimizers`` (after ``loss.backward()``), keep the update only while
        every step so far is healthy, and add this step's numbers to the sums:
        ``loss``, ``nonzero`` and ``objective()``, evaluated after the update (the loss
        again in its slot when there is no ``objective``). Issues no host read."""
        params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        loss = loss.detach()
        loss_ok = torch.isfinite(loss)
        grad_ok = _all_finite(grads, like=loss_ok)
        healthy_so_far = self.state[_BAD.start] < 0
        gated = all(group.get("fused") for o in optimizers for group in o.param_groups)
        if gated:
            skip = (~(healthy_so_far & loss_ok & grad_ok)).to(torch.float32)
            for optimizer in optimizers:
                optimizer.found_inf = skip
                try:
                    optimizer.step()
                finally:
                    optimizer.found_inf = None
        else:
            buffers = [t for o in optimizers for p in params if p in o.state for t in
                       o.state[p].values() if isinstance(t, torch.Tensor) and t.dim() > 0]
            kept = params + buffers
            before = [t.detach().clone() for t in kept]
            for optimizer in optimizers:
                optimizer.step()
        params_ok = _all_finite(params, like=loss_ok)
        reason = torch.where(~loss_ok, LOSS, torch.where(~grad_ok, GRADIENT,
                                                         torch.where(~params_ok, UPDATE, 0)))
        keep = healthy_so_far & (reason == 0)
        with torch.no_grad():
            if not gated:
                for tensor, old in zip(kept, before):
                    torch.where(keep, tensor, old, out=tensor)
            loss64 = loss.to(torch.float64)
            after = objective() if objective is not None else loss64
            sums = torch.stack([loss64, nonzero.to(torch.float64).reshape(()),
                                after.to(torch.float64).reshape(())])
            self.state[_SUMS] += torch.where(keep, sums, 0.0)
            bad = torch.stack([self.state[_STEP], reason.to(torch.float64), loss64])
            self.state[_BAD] = torch.where(healthy_so_far & (reason != 0), bad, self.state[_BAD])
            self.state[_STEP] += 1.0

    def read(self) -> Reading:
        """The epoch's sums and the first unhealthy step: one transfer to the host."""
        values = self.state.tolist()
        steps, self.pending = self.pending, 0
        bad_step = int(values[3]) if values[3] >= 0 else None
        what = None
        if bad_step is not None:
            reason = int(values[4])
            what = f"the loss is {values[5]}" if reason == LOSS else _WHAT[reason]
        return Reading(steps, values[0], values[1], values[2], bad_step, what)


def _all_finite(tensors: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor: the 2-norm of every tensor is finite, that is every entry is
    finite and none is so large (about 1e19 in float32) that the squares overflow: a
    model that far out has diverged as surely as one with an inf."""
    if not tensors:
        return torch.ones_like(like)
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all()
