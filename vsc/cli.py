"""vsc: train and evaluate sparse-coding models with the vsc-kernels ops.

  vsc train CONFIG [key=value ...] [--out DIR] [--resume] [--device DEV] [--full]
  vsc keys [CONFIG]              the override keys: type, default, help
  vsc configs                    the shipped configs
  vsc eval RUN_DIR               recompute a run's summary.json
  vsc table [--table2] RUN_DIR [RUN_DIR ...]
  vsc dictionaries RUN_DIR [RUN_DIR ...] --out FIGURE.png
  vsc sweep CONFIG [CONFIG ...] [key=value ...] --latent-dims 64,512 --pct 5,10 [--run]
  vsc figure7 RUN_DIR [RUN_DIR ...] [--out figure7.png]

CONFIG is a TOML/YAML/JSON file or the name of a shipped config (e.g. quick,
table1/thresholded_laplacian_J20, dnn/quick or fmnist/thresholded_gaussian). DNN-generator
configs (generator = "dnn") also train under
`torchrun --nproc_per_node=N -m vsc.cli train CONFIG ...`. `vsc COMMAND --help` describes
each command.
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

# Nothing here imports torch at module level: `vsc --help` answers at once, and a
# Ctrl-C while torch loads is handled by main() like any other (no traceback).


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
    from . import runs
    from .config import load_config
    from .train import train

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={json.dumps(args.device)}")
    if args.full:
        overrides.append("full=true")
    config = load_config(resolve_config_path(args.config), overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{config.name or 'run'}_seed{config.seed}"
    if getattr(config, "generator", "linear") == "dnn":
        if not args.out:   # fmnist/x and celeba/x share their stems: keep the folder's name
            label = args.config if args.config in shipped_configs() else Path(args.config).stem
            out = Path("runs") / f"{label.replace('/', '_')}_d{config.latent_dim}_seed{config.seed}"
        args.out_dir = out
        return _train_dnn(args, config, out)
    if args.stop_after_steps is not None:
        raise ValueError("--stop-after-steps applies to DNN-generator configs")
    args.out_dir = out
    runs.check_free(out)  # these two say so before the data are loaded
    if args.resume:
        runs.find_checkpoint(out)
    print(f"vsc train: {config.name or args.config} -> {out}", flush=True)
    summary = train(config, out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def _train_dnn(args, config, out: Path) -> int:
    """A DNN-generator run, on this process or as one of torchrun's; rank 0 prints."""
    from . import runs
    from .dnn.train import train as train_dnn

    main_rank = os.environ.get("RANK", "0") == "0"
    if main_rank:
        runs.check_free(out)  # these two say so before the data are loaded
        if args.resume:
            runs.find_checkpoint(out)
        world = os.environ.get("WORLD_SIZE", "1")
        print(f"vsc train: {config.name or args.config} -> {out} ({world} process(es))",
              flush=True)
    try:
        summary = train_dnn(config, out, resume=args.resume, progress=not args.no_progress,
                            stop_after_steps=args.stop_after_steps)
    except runs.Interrupted as stop:
        if main_rank:
            print(f"vsc train: {stop}\nresume with: {_resume_command(out)}",
                  file=sys.stderr, flush=True)
        return stop.exit_code
    if main_rank:
        if "stopped_at_step" in summary:
            print(f"vsc train: stopped after step {summary['stopped_at_step']} with a "
                  f"checkpoint; resume with: {_resume_command(out)}", flush=True)
        else:
            print(json.dumps(summary, indent=2))
    return 0


def _resume_command(out: Path) -> str:
    """This command without --stop-after-steps, with --resume (torchrun's when under it)."""
    from . import runs

    argv, skip = [], False
    for arg in sys.argv[1:]:
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
        raise ValueError("name at least one DNN config (e.g. fmnist/gaussian)")
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


def _eval_dnn(config, run: Path) -> int:
    """Recompute a DNN run's summary and figures from its last checkpoint."""
    from . import runs
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


def _table(args) -> int:
    print(table2(args.run_dirs) if args.table2 else table(args.run_dirs))
    return 0


def _dictionaries(args) -> int:
    print(dictionaries(args.run_dirs, args.out))
    return 0


def _eval(args) -> int:
    from . import runs
    from .config import load_config
    from .train import Trainer, write_json

    run = Path(args.run_dir)
    config_path = run / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run} holds no run (no config.json)")
    runs.check_free(run)
    runs.find_checkpoint(run)
    config = load_config(config_path, [f"device={json.dumps(args.device)}"] if args.device else [])
    if getattr(config, "generator", "linear") == "dnn":
        return _eval_dnn(config, run)
    with runs.RunLock(run):
        trainer = Trainer(config, run, progress=False)
        trainer.load_checkpoint()
        summary = trainer.evaluate()
        write_json(run / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def _keys(args) -> int:
    from .config import Config, config_class, load_config, read_file
    from .overrides import describe_fields

    values, cls = None, Config
    if args.config:
        path = resolve_config_path(args.config)
        cls = config_class(read_file(path))
        if cls is Config:
            values = load_config(path).to_dict()
        else:   # a DNN config may leave data to the command line: the file's values
            values = read_file(path)
    print(describe_fields(cls, values))
    print("\nSet any key on the command line: vsc train CONFIG key=value ... (TOML syntax: "
          "1e-3, true, \"max\"; none for an unset optional value).")
    return 0


TABLE_COLUMNS = [("val_loss", "Validation loss"), ("multi_information", "Multi-information"),
                 ("iwae_loss", "IWAE loss"), ("pct_nonzero", "% non-zero")]
TABLE2_COLUMNS = [("posterior_collapse_pct", "% Posterior collapse"),
                  ("feature_collapse_pct", "% Feature collapse")]


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


def _read_run(run: str, allow_diverged: bool = False) -> dict:
    """A run's summary.json; with ``allow_diverged`` a diverged run's diverged.json (its
    metrics are NaN)."""
    from .train import DIVERGED

    path = Path(run) / "summary.json"
    if path.exists():
        return json.loads(path.read_text())
    if allow_diverged and (Path(run) / DIVERGED).exists():
        return {**json.loads((Path(run) / DIVERGED).read_text()), "diverged": True}
    raise FileNotFoundError(f"{path} does not exist (train or `vsc eval` the run first)")


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    rows = [header] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def _grouped_table(groups: dict[tuple[str, int], list[dict]], columns, cell) -> str:
    """One row per method label, one column per (metric, J): ``cell(runs, key)`` over the
    runs (seeds) of that label and J, with ``(n=...)`` when there are several."""
    labels = list(dict.fromkeys(label for label, _ in groups))
    budgets = sorted({J for _, J in groups})
    header = ["Method/Prior"] + [f"{title} J={J}" for _, title in columns for J in budgets]
    rows = []
    for label in labels:
        row = [label]
        for key, _ in columns:
            for J in budgets:
                runs = groups.get((label, J), [])
                row.append(cell(runs, key) + (f" (n={len(runs)})" if len(runs) > 1 else ""))
        rows.append(row)
    return _format_table(header, rows)


def table(run_dirs: list[str]) -> str:
    """Table-1-style text: one row per method, columns per metric and J, mean ± std
    over the runs (seeds) that share them. Validation losses are objective (10) in each
    run's convention (``0.5 ||x - Az||^2 + 20 ||z||_1`` under "public_code", the
    paper's Table 1 scale), noted under the table."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    weights = set()
    for run in run_dirs:
        summary = _read_run(run)
        J = 1 if summary["method"] == "fista" else summary["num_samples"]
        groups[(_row_label(summary), J)].append(summary)
        weights.add(summary.get("objective_weight", 1.0))
    text = _grouped_table(groups, TABLE_COLUMNS,
                          lambda runs, key: _mean_std([r.get(key) for r in runs]))
    scale = " / ".join("0.5 ||x - Az||^2" if w == 0.5 else "||x - Az||^2" for w in sorted(weights))
    return (text + f"\nValidation loss: {scale} + 20 ||z||_1 per patch "
            "(objective 10; the paper's Table 1 uses 0.5 ||x - Az||^2).")


def table2(run_dirs: list[str]) -> str:
    """Table-2-style text: posterior collapse (eq. 15) and feature collapse (eq. 16) per
    estimator and J, mean ± std over seeds; a run that diverged counts as NaN."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for run in run_dirs:
        summary = _read_run(run, allow_diverged=True)
        if summary.get("method") == "fista":
            raise ValueError(f"{run}: Table 2 compares variational estimators, not FISTA")
        estimator = {"subgradient": "SG"}.get(summary.get("estimator"), "ST")
        label = _row_label({**summary, "estimator": None}) + f" ({estimator})"
        groups[(label, summary["num_samples"])].append(summary)
    def cell(runs: list[dict], key: str) -> str:
        finished = [r.get(key) for r in runs if not r.get("diverged")]
        nan = len(runs) - len(finished)
        text = _mean_std(finished) if finished else ("NaN" if runs else "-")
        return text + (f", NaN in {nan}" if finished and nan else "")

    return _grouped_table(groups, TABLE2_COLUMNS, cell) + (
        "\nNaN: the run stopped on a non-finite loss or gradient (its diverged.json). "
        "SG: the exact subgradient of eq. (2); ST: straight-through (eq. 4, or the public "
        "code's variant under convention=\"public_code\").")


def dictionaries(run_dirs: list[str], out: str) -> Path:
    """One figure with each run's dictionary (Figure 3 / 18), titled by its method."""
    import torch

    from . import metrics, plots
    from .train import CHECKPOINT

    panels = []
    for run in run_dirs:
        path = Path(run) / CHECKPOINT
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (train the run first)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        summary = json.loads((Path(run) / "summary.json").read_text()) \
            if (Path(run) / "summary.json").exists() else {}
        label = _row_label(summary) if summary else Path(run).name
        if summary.get("method") != "fista" and summary:
            label += f", {summary['sampling']} J={summary['num_samples']}"
        if summary:
            label += f"\nval. loss {summary['val_loss']:.4g}, {summary['pct_nonzero']:.1f}% non-zero"
        A = state["generator"]["A"]
        side = math.isqrt(A.shape[0])
        if side * side == A.shape[0]:
            label += (f"\natoms: {100 * metrics.gabor_like_fraction(A, (side, side)):.0f}% "
                      f"localized+oriented, {100 * metrics.duplicate_atom_fraction(A):.0f}% "
                      "near-duplicates")
        panels.append((label, A))
    return plots.plot_dictionaries(panels, out)


TRAIN_HELP = """Train one run into --out (default runs/NAME_seedSEED).

Override any config key with key=value (TOML syntax: 1e-3, true, "max"); `vsc keys`
lists the keys with their types, defaults and meaning (`vsc keys CONFIG`: the values
CONFIG sets). A bad key or value is refused before anything runs (exit code 2).

The run writes config.json, metrics.jsonl, checkpoint.pt (+ checkpoint.prev.pt, the
previous one), figures and summary.json. Ctrl-C or SIGTERM stops after the current
step, saves a checkpoint and prints the command that resumes. One run at a time per
folder: a second run on the same --out is refused while the first is alive."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train one run", description=TRAIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG",
                   help="a TOML/YAML/JSON file or a shipped config name (`vsc configs`)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides (`vsc keys` lists the keys)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME_seedSEED)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (same config)")
    p.add_argument("--device", metavar="DEV", help="torch device, e.g. cpu or cuda:0 "
                   "(same as device=...)")
    p.add_argument("--full", action="store_true",
                   help="ignore quick=true: the paper's Appendix D schedule")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-after-steps", type=int, metavar="N",
                   help="DNN runs: stop after checkpointing at step N (a job of bounded "
                   "length; continue with --resume)")
    p.set_defaults(func=_train)
    p = sub.add_parser("keys", help="list the config keys (types, defaults, help)",
                       description="List the keys `vsc train` accepts as key=value, with "
                       "their types, defaults (or CONFIG's values) and meaning.")
    p.add_argument("config", nargs="?", metavar="CONFIG", help="show this config's values")
    p.set_defaults(func=_keys)
    p = sub.add_parser("dictionaries", help="the runs' dictionaries side by side (Figure 18)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.set_defaults(func=_dictionaries)
    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=lambda a: print("\n".join(shipped_configs())) or 0)
    p = sub.add_parser("eval", help="re-evaluate a run directory (rewrites summary.json)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--device", metavar="DEV")
    p.set_defaults(func=_eval)
    p = sub.add_parser("table", help="Table-1-style summary of run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--table2", action="store_true",
                   help="posterior and feature collapse per estimator (Table 2)")
    p.set_defaults(func=_table)
    p = sub.add_parser("sweep", help="Figure 7 grid of DNN runs: print the commands or --run",
                       description="One `vsc train` run per config, latent dimension, % "
                       "non-zero and seed (the dense priors once per dimension and seed). "
                       "Prints the commands; --run runs them here one after another "
                       "(finished runs skipped, checkpointed ones resumed).")
    p.add_argument("items", nargs="+", metavar="CONFIG|key=value",
                   help="DNN configs, and key=value overrides for every run")
    p.add_argument("--latent-dims", default="64,128,256,512",
                   help="comma-separated latent dimensions (default 64,128,256,512)")
    p.add_argument("--pct", default="10", help="comma-separated %% non-zero targets (default 10)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (the paper: 0,1337,747)")
    p.add_argument("--out-root", default="runs/sweep", metavar="DIR")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun)")
    p.add_argument("--run", action="store_true", help="run the grid here, one run at a time")
    p.set_defaults(func=_sweep)
    p = sub.add_parser("figure7", help="Figure 7's panels from finished DNN runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="figure7.png", metavar="PNG")
    p.set_defaults(func=_figure7)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, prefix = None, "vsc"
    try:
        args = build_parser().parse_args(argv)
        prefix = f"vsc {args.command}"
        return _run(args, argv, prefix)
    except KeyboardInterrupt:  # outside a training loop (which saves and stops itself)
        runs = sys.modules.get("vsc.runs")
        out = getattr(args, "out_dir", None)
        hint = ""
        if runs is not None and out is not None and any(
                (Path(out) / name).exists() for name in (runs.CHECKPOINT, runs.PREVIOUS)):
            hint = f"; resume from its last checkpoint with: {runs.resume_command(argv, out)}"
        print(f"\n{prefix}: interrupted{hint}", file=sys.stderr)
        return 130


def _run(args, argv: list[str], prefix: str) -> int:
    """Run the command; user errors become one line each on stderr and exit code 2,
    never a traceback. Anything else is a bug and keeps its traceback."""
    from . import runs
    from .overrides import ConfigError

    user_errors = (ValueError, OSError, runs.RunLocked, runs.CheckpointError)
    try:
        return args.func(args)
    except runs.Interrupted as stopped:
        print(f"{prefix}: {stopped}\nresume with: {runs.resume_command(argv, args.out_dir)}",
              file=sys.stderr)
        return stopped.exit_code
    except FloatingPointError as error:  # a diverged run: diverged.json says where; its
        print(f"{prefix}: diverged: {error}", file=sys.stderr)  # checkpoint is intact
        return 3
    except user_errors as error:
        lines = error.lines if isinstance(error, ConfigError) else [str(error)]
        for line in lines:
            print(f"{prefix}: error: {line}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:  # e.g. n_val=10000000: the data do not fit
        if isinstance(error, RuntimeError) and "can't allocate memory" not in str(error):
            raise
        print(f"{prefix}: error: out of memory ({str(error).strip().splitlines()[0]}); use a "
              f"smaller config (n_train, n_val, batch_size, eval_rows, latent_dim)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
