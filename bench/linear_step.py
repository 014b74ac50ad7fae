"""Benchmark one linear-generator training step (``vsc.train.Trainer.train_step``): the
README's main job (Thresholded Laplacian, J = 20, max-ELBO sampling, 16x16 patches,
256 atoms) at the paper's batch of 100.

Providers
    ``eager_read_every_step``  the eager step, then the monitor read after every step
                               (``check_every = 1``): one host synchronisation per step.
                               The step before issue 11 read back five values per step
                               (loss, gradient and parameter finiteness, objective, % non-zero).
    ``eager``                  the eager step, read every 100 steps (the default): the host
                               queues steps without waiting for the device.
    ``cuda_graphs``            (CUDA only) the step replayed from a CUDA graph
                               (``cuda_graphs = true``, :mod:`vsc.graphed_step`).

The prior's warm-up is moved to its end first (a graph is captured only once the schedule
is steady), the dictionary steps at Appendix D's learning rate (0.5; the quick job's 2.0
diverges without the warm-up), and every provider cycles through the same batches. Reported: milliseconds per step
(interleaved rounds, median), steps per second, speedup over ``eager_read_every_step``
and ``eager``.

    python bench/linear_step.py                    # CPU (cuda_graphs not available)
    python bench/linear_step.py --device cuda      # GPU: all three
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from vsc.config import load_config  # noqa: E402
from vsc.step_monitor import StepMonitor  # noqa: E402
from vsc.train import Trainer  # noqa: E402

QUICK_CONFIG = Path(__file__).resolve().parent.parent / "vsc" / "configs" / "quick.toml"
STEADY_STEP = 10**6     # past every warm-up


def build(provider: str, device: torch.device, batch: int, workdir: Path) -> Trainer:
    overrides = [f'device="{device}"', f"batch_size={batch}", "n_train=2000", "n_val=500",
                 "lr_dictionary=0.5",
                 f'cache_dir="{workdir / "patches"}"',
                 f"check_every={1 if provider == 'eager_read_every_step' else 100}",
                 f"cuda_graphs={'true' if provider == 'cuda_graphs' else 'false'}"]
    trainer = Trainer(load_config(QUICK_CONFIG, overrides), workdir / provider, progress=False)
    trainer.step = STEADY_STEP
    trainer.monitor = StepMonitor(trainer.device, STEADY_STEP)
    return trainer


def step_fn(trainer: Trainer, batches: list[torch.Tensor], health: dict):
    """One step and, every ``check_every`` steps, the monitor's read (one transfer)."""
    state = {"i": 0}

    def step():
        trainer.train_step(batches[state["i"] % len(batches)])
        state["i"] += 1
        if trainer.monitor.pending >= trainer.config.check_every:
            trainer.monitor.pending = 0
            reading = trainer.monitor.read()
            health["first_unhealthy_step"] = reading.bad_step
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=100, help="B (Appendix D: 100)")
    common.add_timing_options(parser)
    args = parser.parse_args(argv)
    clock = common.apply_timing_options(args)
    device = torch.device(args.device)
    providers = ["eager_read_every_step", "eager"] + (["cuda_graphs"] if device.type == "cuda"
                                                      else [])
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {p: build(p, device, args.batch, Path(tmp)) for p in providers}
        batches = list(trainers["eager"].train_x.split(args.batch))[:-1]
        health = {p: {"first_unhealthy_step": None} for p in providers}
        calls = {p: step_fn(t, batches, health[p]) for p, t in trainers.items()}
        seconds = common.time_interleaved(calls, device, rounds=args.rounds or 15,
                                          round_seconds=0.2, warmup=8, clock=clock)
        graphed = trainers.get("cuda_graphs")
        captures = graphed.graphed_step.captures if graphed else None
        replays = graphed.graphed_step.replays if graphed else None
    rows = [{"provider": p, "B": args.batch, "J": 20, "D": 256, "d": 256,
             "time_ms": s * 1e3, "steps_per_s": 1.0 / s} for p, s in seconds.items()]
    rows = common.add_speedups(rows, ("B",), ("eager_read_every_step", "eager"))
    common.print_table(rows, [("provider", "provider", "s"), ("B", "B", "d"),
                              ("time_ms", "ms/step", ".3f"), ("steps_per_s", "steps/s", ".1f"),
                              ("speedup_vs_eager_read_every_step", "vs read/step", ".2f"),
                              ("speedup_vs_eager", "vs eager", ".2f")])
    if graphed:
        print(f"cuda_graphs: {captures} capture(s), {replays} replays")
    if not args.no_save:
        payload = {"op": "linear_step", "environment": common.environment(device),
                   "clock": clock.__name__, "config": str(QUICK_CONFIG.name),
                   "graph_captures": captures, "graph_replays": replays, "health": health,
                   "results": rows}
        path = common.write_results("linear_step", device, payload, directory=args.out)
        print(f"saved {path}")


if __name__ == "__main__":
    main()
