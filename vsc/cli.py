"""``vsc`` command line.

    vsc train CONFIG [key=value ...] [--out DIR] [--resume] [--device DEV] [--full]
    vsc eval RUN_DIR
    vsc table RUN_DIR [RUN_DIR ...]
    vsc sweep CONFIG [CONFIG ...] [key=value ...] --latent-dims 64,512 --pct 5,10 [--run]
    vsc figure7 RUN_DIR [RUN_DIR ...] [--out figure7.png]

``CONFIG`` is a TOML/YAML file or the name of a shipped config (``vsc configs``
lists them, e.g. ``quick``, ``table1/thresholded_laplacian_J20``, ``dnn/quick`` or
``fmnist/thresholded_gaussian``). DNN-generator configs (``generator = "dnn"``) also run
under ``torchrun --nproc_per_node=N -m vsc.cli train CONFIG ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

from . import runs
from .config import load_config


def shipped_configs() -> dict[str, Path]:
    root = Path(str(resources.files("vsc") / "configs"))
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.toml"))}


def resolve_config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if name in shipped:
        return shipped[name]
    raise FileNotFoundError(f"config {name!r} is neither a file nor a shipped config "
                            f"({', '.join(shipped)})")


def _train(args) -> int:
    from .train import train

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f'device="{args.device}"')
    if args.full:
        overrides.append("full=true")
    config = load_config(resolve_config_path(args.config), overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{config.name or 'run'}_seed{config.seed}"
    if getattr(config, "generator", "linear") == "dnn":
        if not args.out:   # fmnist/x and celeba/x share their stems: keep the folder's name
            label = args.config if args.config in shipped_configs() else Path(args.config).stem
            out = Path("runs") / f"{label.replace('/', '_')}_d{config.latent_dim}_seed{config.seed}"
        return _train_dnn(args, config, out)
    if args.stop_after_steps is not None:
        raise ValueError("--stop-after-steps applies to DNN-generator configs")
    print(f"vsc train: {config.name or args.config} -> {out}", flush=True)
    summary = train(config, out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def _train_dnn(args, config, out: Path) -> int:
    """A DNN-generator run, on this process or as one of torchrun's; rank 0 prints."""
    from .dnn.train import train as train_dnn

    main_rank = os.environ.get("RANK", "0") == "0"
    if main_rank:
        world = os.environ.get("WORLD_SIZE", "1")
        print(f"vsc train: {config.name or args.config} -> {out} ({world} process(es))",
              flush=True)
    try:
        summary = train_dnn(config, out, resume=args.resume, progress=not args.no_progress,
                            stop_after_steps=args.stop_after_steps)
    except runs.Interrupted as stop:
        if main_rank:
            print(f"vsc train: {stop}\n  continue with: {_resume_command(out)}",
                  file=sys.stderr, flush=True)
        return stop.exit_code
    if main_rank:
        if "stopped_at_step" in summary:
            print(f"vsc train: stopped after step {summary['stopped_at_step']} with a "
                  f"checkpoint; continue with: {_resume_command(out)}", flush=True)
        else:
            print(json.dumps(summary, indent=2))
    return 0


def _resume_command(out: Path) -> str:
    argv, skip = [], False
    for arg in sys.argv[1:]:        # this command without --stop-after-steps
        if skip or arg.startswith("--stop-after-steps="):
            skip = False
            continue
        skip = arg == "--stop-after-steps"
        if not skip:
            argv.append(arg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        nproc = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        return runs.resume_command(argv, out, prog=f"torchrun --nproc_per_node={nproc} "
                                                   "[the same rendezvous options] -m vsc.cli")
    return runs.resume_command(argv, out)


def _sweep(args) -> int:
    from .dnn.sweep import parse_list, run_sweep, sweep_commands

    names = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    if not names:
        raise ValueError("vsc sweep: name at least one DNN config (e.g. fmnist/gaussian)")
    planned = sweep_commands([(n, resolve_config_path(n)) for n in names], overrides,
                             parse_list(args.latent_dims, int), parse_list(args.pct),
                             parse_list(args.seeds, int), args.out_root, args.nproc)
    if not args.run:
        print("\n".join(run["command"] for run in planned))
        return 0
    return 1 if run_sweep(planned, args.nproc) else 0


def _figure7(args) -> int:
    from . import plots
    from .dnn.sweep import figure7_records

    records = figure7_records(args.run_dirs)
    plots.plot_figure7(records, args.out)
    print(f"vsc figure7: {len(records)} runs -> {args.out}")
    return 0


def _eval(args) -> int:
    from .train import CHECKPOINT, Trainer, write_json

    run = Path(args.run_dir)
    config_path = run / "config.json"
    if not (run / CHECKPOINT).exists() or not config_path.exists():
        raise FileNotFoundError(f"{run} holds no finished or checkpointed run "
                                f"({CHECKPOINT}, config.json)")
    config = load_config(config_path, [f'device="{args.device}"'] if args.device else [])
    if getattr(config, "generator", "linear") == "dnn":
        return _eval_dnn(config, run)
    trainer = Trainer(config, run, progress=False)
    trainer.load_checkpoint(run / CHECKPOINT)
    summary = trainer.evaluate()
    write_json(run / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def _eval_dnn(config, run: Path) -> int:
    """Recompute a DNN run's summary and figures from its last checkpoint."""
    from .dnn.train import DnnTrainer

    with runs.RunLock(run):
        trainer = DnnTrainer(config, run, progress=False)
        try:
            trainer.load_state(runs.load_checkpoint(run, map_location="cpu")[0])
            summary = trainer.finish()
        finally:
            trainer.close()
    print(json.dumps(summary, indent=2))
    return 0


TABLE_COLUMNS = [("val_loss", "Validation loss"), ("multi_information", "Multi-information"),
                 ("iwae_loss", "IWAE loss"), ("pct_nonzero", "% non-zero")]


def _row_label(summary: dict) -> str:
    if summary["method"] == "fista":
        return "FISTA (baseline)"
    label = summary["prior"].replace("_", " ").title().replace("Spike Slab", "Spike-and-slab")
    if summary.get("learn_threshold"):
        label += "+Gamma"
    if summary.get("estimator") not in (None, "straight"):
        label += f" ({summary['estimator']})"
    if summary.get("sampling") not in (None, "max"):
        label += f" [{summary['sampling']}]"
    return label


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3g}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.3g} ± {std:.2g}"


def table(run_dirs: list[str]) -> str:
    """Table-1-style text: one row per method, columns per metric and J, mean ± std
    over the runs (seeds) that share them."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for run in run_dirs:
        path = Path(run) / "summary.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (train or `vsc eval` the run first)")
        summary = json.loads(path.read_text())
        J = 1 if summary["method"] == "fista" else summary["num_samples"]
        groups[(_row_label(summary), J)].append(summary)
    labels = list(dict.fromkeys(label for label, _ in groups))
    budgets = sorted({J for _, J in groups})
    header = ["Method/Prior"] + [f"{title} J={J}" for _, title in TABLE_COLUMNS for J in budgets]
    rows = [header]
    for label in labels:
        row = [label]
        for key, _ in TABLE_COLUMNS:
            for J in budgets:
                runs = groups.get((label, J), [])
                row.append(_mean_std([r.get(key) for r in runs]) + (f" (n={len(runs)})"
                                                                      if len(runs) > 1 else ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vsc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one run")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value (TOML syntax)")
    p.add_argument("--out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device")
    p.add_argument("--full", action="store_true", help="ignore quick=true: Appendix D's schedule")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stop-after-steps", type=int, metavar="N",
                   help="DNN runs: stop after checkpointing at step N (resume with --resume)")
    p.set_defaults(func=_train)
    p = sub.add_parser("eval", help="re-evaluate a run directory")
    p.add_argument("run_dir")
    p.add_argument("--device")
    p.set_defaults(func=_eval)
    p = sub.add_parser("table", help="Table-1-style summary of run directories")
    p.add_argument("run_dirs", nargs="+")
    p.set_defaults(func=lambda a: print(table(a.run_dirs)) or 0)
    p = sub.add_parser("sweep", help="Figure 7 grid of DNN runs: print (default) or --run")
    p.add_argument("items", nargs="+", help="DNN configs, then key=value overrides for all runs")
    p.add_argument("--latent-dims", default="64,128,256,512",
                   help="comma-separated latent dimensions (default 64,128,256,512)")
    p.add_argument("--pct", default="10", help="comma-separated %% non-zero targets (default 10)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (paper: 0,1337,747)")
    p.add_argument("--out-root", default="runs/sweep")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun)")
    p.add_argument("--run", action="store_true", help="run the grid here, one run after another")
    p.set_defaults(func=_sweep)
    p = sub.add_parser("figure7", help="Figure 7's panels from finished DNN runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default="figure7.png")
    p.set_defaults(func=_figure7)
    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=lambda a: print("\n".join(shipped_configs())) or 0)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError,
            runs.RunLocked, runs.CheckpointError) as error:
        print(f"vsc {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
