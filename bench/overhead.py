"""Per-call overhead: the fused ops against the same math written eagerly with torch's
ops (and torch's RNG), on tiny inputs where the arithmetic takes nanoseconds and what is
measured is dispatch, checks and allocations.

Ops and inputs: ``threshold_sample`` on ``(1, 8)`` with ``J = 4``; ``linear_elbo`` with
``B = 1, J = 4, d = D = 8``; ``elbo_select`` with ``B = 1, J = 4, F = 8``; modes
``forward`` (no grad) and ``forward+backward``. Providers: ``eager`` (the reference's
equations: ``reference.threshold_sample(noise="torch")``, the ``reference`` backend of
``linear_elbo``, ``elbo_select.reference``) and ``vsc_kernels`` (default backend).
``ratio`` is the op's time over eager's; the targets of issue 11 are forward <= 0.5 and
forward+backward <= 0.8.

    python bench/overhead.py                 # wall time, interleaved rounds
    python bench/overhead.py --cpu-time --threads 1   # CPU time: steadier on a busy machine
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vsc_kernels  # noqa: E402
from bench import common  # noqa: E402
from vsc_kernels.elbo_select import reference as elbo_reference  # noqa: E402
from vsc_kernels.threshold_sample import reference as ts_reference  # noqa: E402

TARGETS = {"forward": 0.5, "forward+backward": 0.8}
MODES = ("forward", "forward+backward")


@functools.lru_cache(maxsize=1)
def _inputs(device_str):
    device = torch.device(device_str)
    g = torch.Generator(device=device).manual_seed(0)
    return {
        "mu": torch.randn(1, 8, device=device, generator=g).requires_grad_(),
        "logb": torch.zeros(1, 8, device=device).requires_grad_(),
        "x": torch.randn(1, 8, device=device, generator=g),
        "z": torch.randn(1, 4, 8, device=device, generator=g).requires_grad_(),
        "A": torch.randn(8, 8, device=device, generator=g).requires_grad_(),
        "x_hat": torch.randn(1, 4, 8, device=device, generator=g).requires_grad_(),
        "kl": torch.rand(1, 4, device=device, generator=g),
    }


def _threshold_sample(t, eager):
    if eager:
        return ts_reference.threshold_sample(t["mu"], t["logb"], 0.25, num_samples=4,
                                             noise="torch")
    return vsc_kernels.threshold_sample(t["mu"], t["logb"], 0.25, num_samples=4)


def _linear_elbo(t, eager):
    return vsc_kernels.linear_elbo(t["x"], t["z"], t["A"], t["kl"],
                                   backend="reference" if eager else None).loss


def _elbo_select(t, eager):
    if eager:
        return elbo_reference.elbo_select(t["x"], t["x_hat"], t["kl"]).loss
    return vsc_kernels.elbo_select(t["x"], t["x_hat"], t["kl"]).loss


OPS = {"threshold_sample": _threshold_sample, "linear_elbo": _linear_elbo,
       "elbo_select": _elbo_select}


def _call(fn, t, eager, mode):
    if mode == "forward":
        with torch.no_grad():
            return fn(t, eager)
    fn(t, eager).sum().backward()
    for key in ("mu", "logb", "z", "A", "x_hat"):
        t[key].grad = None


def cases(device: torch.device, quick: bool = False) -> list[common.Case]:
    out = []
    for op, fn in OPS.items():
        for mode in MODES:
            def build(fn=fn, mode=mode):
                t = _inputs(str(device))
                return {"eager": functools.partial(_call, fn, t, True, mode),
                        "vsc_kernels": functools.partial(_call, fn, t, False, mode)}

            out.append(common.Case(op="overhead", params={"op": op, "mode": mode},
                                   providers=("eager", "vsc_kernels"), build=build, work=None,
                                   unit="calls", baselines=("eager",)))
    return out


COLUMNS = [("op", "op", "s"), ("mode", "mode", "s"), ("provider", "provider", "s"),
           ("time_us", "us", ".1f"), ("ratio_to_eager", "x eager time", ".3f"),
           ("target", "target", ".2f")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="(same cases; fewer rounds)")
    common.add_timing_options(parser, rounds=False)
    args = parser.parse_args(argv)
    clock = common.apply_timing_options(args)
    device = torch.device(args.device)
    rounds = 9 if args.quick else args.rounds
    print(f"device: {common.device_name(device)}; backend: "
          f"{vsc_kernels.resolve_backend(None, device.type)}; load {common.load_average()}; "
          f"clock: {'CPU time' if args.cpu_time else 'wall'}")
    rows = common.run_cases(cases(device), device, rounds=rounds, clock=clock)
    for case_rows in zip(rows[::2], rows[1::2]):
        eager, ours = case_rows
        for row in case_rows:
            row["time_us"] = row["time_ms"] * 1e3
            row["ratio_to_eager"] = row["time_ms"] / eager["time_ms"]
        ours["target"] = TARGETS[ours["mode"]]
        ours["meets_target"] = ours["ratio_to_eager"] <= ours["target"]
    common.print_table(rows, COLUMNS)
    if not args.no_save:
        result = common.payload("overhead", device, rows, rounds=rounds,
                                clock=clock.__name__,
                                shapes={"threshold_sample": "mu (1, 8), J=4",
                                        "linear_elbo": "B=1, J=4, d=8, D=8",
                                        "elbo_select": "B=1, J=4, F=8"}, targets=TARGETS)
        name = "overhead_cputime" if args.cpu_time else "overhead"
        print(f"wrote {common.write_results(name, device, result, directory=args.out)}")
    return rows


if __name__ == "__main__":
    main()
