"""The linear trainer's step replayed from a CUDA graph (config ``cuda_graphs = true``).

At the paper's batch of 100 the step is a few dozen small kernels, and on a GPU the host
spends longer launching them than the device spends running them. A CUDA graph launches
the whole recorded step at once. What makes the step capturable:

* it reads nothing back to the host (:mod:`vsc.step_monitor` keeps the loss, the
  progress numbers and the health on the device);
* its learning rates are device tensors: with ``cuda_graphs`` the trainer builds fused
  SGD with a tensor ``lr``, which the schedulers fill in place between steps;
* its noise comes from seeds that ``vsc_kernels`` draws with torch's CUDA generator,
  which CUDA graphs support (every replay draws new numbers).

What a graph cannot follow are the Python numbers baked into it when it was captured:
the prior's schedule (warm-ups, temperatures: ``Prior.schedule``), the optimizers'
other hyperparameters (OneCycleLR cycles the momentum), the batch shape (the last batch
of an epoch may be smaller) and the monitor it writes to. So :class:`GraphedStep` keys a
graph by those, captures once the key has stayed the same for ``WARMUP_STEPS`` steps
(after the warm-ups), replays while it stays, and otherwise runs the step eagerly.
Capture follows PyTorch's recipe: eager steps on a side stream first (they allocate the
gradients and the optimizer buffers), gradients set to None, capture, then replay
(capturing records the step without running it).

Not run in this repository's CI (no GPU): ``bench/gpu_check.sh`` runs the CUDA test and
``bench/linear_step.py`` measures it; on the CPU a test replays the same step through a
stand-in for the graph and checks that it trains exactly as the eager loop does.
"""

from __future__ import annotations

from typing import Callable

import torch

# Called with the step (a function of no arguments), returns the function that replays it.
Capture = Callable[[Callable[[], None]], Callable[[], None]]


def capture_cuda_graph(step: Callable[[], None]) -> Callable[[], None]:
    """Record ``step`` into a ``torch.cuda.CUDAGraph``; returns its ``replay``."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


class GraphedStep:
    """Runs ``trainer``'s device step (``trainer.device_step(x)``) from a captured graph
    whenever the key allows, eagerly otherwise. ``capture`` records a step (default:
    a CUDA graph)."""

    WARMUP_STEPS = 3     # eager steps with an unchanged key before capturing

    def __init__(self, trainer, capture: Capture = capture_cuda_graph):
        self.trainer = trainer
        self.capture = capture
        self.replay = None
        self.key = None
        self.steady = 0          # consecutive steps with the current key
        self.static_x = None
        self.captures = 0
        self.replays = 0
        self.side_stream = (torch.cuda.Stream(trainer.device)
                            if trainer.device.type == "cuda" else None)

    def key_of(self, x: torch.Tensor) -> tuple:
        t = self.trainer
        hyper = tuple((name, value) for o in t.optimizers.values() for g in o.param_groups
                      for name, value in sorted(g.items())
                      if name not in ("params", "lr") and isinstance(value, (bool, int, float)))
        return tuple(x.shape), x.dtype, t.prior.schedule(t.step), hyper, id(t.monitor)

    def __call__(self, x: torch.Tensor) -> None:
        key = self.key_of(x)
        if key != self.key:
            self.key, self.steady, self.replay = key, 0, None
        if self.replay is None and self.steady >= self.WARMUP_STEPS:
            self._capture(x)
        if self.replay is not None:
            self.static_x.copy_(x)
            self.replay()
            self.replays += 1
        else:
            self._eager(x)
        self.steady += 1

    def _eager(self, x: torch.Tensor) -> None:
        t = self.trainer
        t.zero_grad()
        if self.side_stream is None:
            t.device_step(x)
            return
        # Warm-up steps run on a side stream, as PyTorch's capture recipe asks.
        self.side_stream.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(self.side_stream):
            t.device_step(x)
        torch.cuda.current_stream(t.device).wait_stream(self.side_stream)

    def _capture(self, x: torch.Tensor) -> None:
        t = self.trainer
        self.static_x = x.clone()
        # Gradients allocated inside the capture live in the graph's memory and are
        # overwritten (not accumulated) by every replay.
        t.zero_grad()
        self.replay = self.capture(lambda: t.device_step(self.static_x))
        self.captures += 1
