"""Figure 7's grids: one ``vsc train`` run per (config, latent dimension, % non-zero,
seed), and the figure drawn from the finished runs' ``summary.json``.

:func:`sweep_commands` lists the runs (each an argument list for ``vsc train`` and its
``--out``); the dense priors (Gaussian, Laplacian), whose codes are never exactly zero,
get one run per latent dimension and seed whatever the % non-zero list. :func:`run_sweep`
runs them one after the other (a run whose ``summary.json`` exists is skipped, one with a
checkpoint is resumed), :func:`figure7_records` reads finished runs back.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from ..config import load_config
from .config import DnnConfig

DENSE_PRIORS = ("gaussian", "laplacian")


def parse_list(text: str, kind=float) -> list:
    """``"64,128, 256"`` -> ``[64, 128, 256]``; a clear error for anything else."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"expected a comma-separated list of numbers, got {text!r}")
    return values


def _format(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def sweep_commands(configs: list[tuple[str, Path]], overrides: list[str], latent_dims: list[int],
                   percents: list[float], seeds: list[int], out_root: str | Path,
                   nproc: int = 1) -> list[dict]:
    """One entry per run: ``{"args": [...], "out": path, "command": str}`` where ``args``
    is what follows ``vsc`` (``train CONFIG key=value ... --out DIR``) and ``command`` the
    shell line (with ``torchrun --standalone --nproc_per_node=N -m vsc.cli`` for
    ``nproc > 1``). ``configs`` are ``(name as given, path)``; each must be a DNN config."""
    runs = []
    for given, path in configs:
        config = load_config(path, overrides)
        if not isinstance(config, DnnConfig):
            raise ValueError(f"vsc sweep: {given} is not a DNN-generator config "
                             f"(generator = \"dnn\")")
        stem = (config.name or Path(path).stem).replace("/", "_")
        dataset = Path(given).parent.name or "run"
        grid = [None] if config.prior in DENSE_PRIORS else percents
        for seed in seeds:
            for dim in latent_dims:
                for pct in grid:
                    values = [f"latent_dim={dim}", f"seed={seed}"]
                    label = f"{dataset}_{stem}_d{dim}"
                    if pct is not None:
                        values.append(f"pct_nonzero={_format(pct)}")
                        label += f"_p{_format(pct)}"
                    out = Path(out_root) / f"{label}_s{seed}"
                    args = ["train", given, *overrides, *values, "--out", str(out)]
                    prefix = (["torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m",
                               "vsc.cli"] if nproc > 1 else ["vsc"])
                    runs.append({"args": args, "out": out, "command": shlex.join(prefix + args)})
    return runs


def run_sweep(runs: list[dict], nproc: int = 1, echo=print) -> int:
    """Run every entry of :func:`sweep_commands` in turn; returns the number that failed."""
    failed = 0
    for run in runs:
        out = Path(run["out"])
        if (out / "summary.json").exists():
            echo(f"vsc sweep: {out} is finished, skipped")
            continue
        args = list(run["args"])
        if (out / "checkpoint.pt").exists() or (out / "checkpoint.prev.pt").exists():
            args.append("--resume")
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={nproc}", "-m", "vsc.cli"] if nproc > 1
                    else [sys.executable, "-m", "vsc.cli"])
        echo(f"vsc sweep: {shlex.join(launcher[1:] + args)}")
        code = subprocess.call(launcher + args)
        if code != 0:
            echo(f"vsc sweep: {out} failed (exit code {code})")
            failed += 1
    return failed


FIGURE7_KEYS = ("prior", "latent_dim", "pct_nonzero_target", "val_mse", "fid", "fid_label",
                "val_pct_nonzero", "multi_information", "seed", "dataset")


def figure7_records(run_dirs: list[str | Path]) -> list[dict]:
    """The summary of each finished run, restricted to what Figure 7 plots."""
    records = []
    for run in run_dirs:
        path = Path(run) / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (the run has not finished; "
                                    "`vsc train ... --resume` it first)")
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        missing = [k for k in ("prior", "latent_dim", "pct_nonzero_target", "val_mse")
                   if k not in summary]
        if missing:
            raise ValueError(f"{path} is not a DNN-generator summary (missing {missing})")
        records.append({k: summary.get(k) for k in FIGURE7_KEYS})
    return records
