"""vsc: train and evaluate sparse-coding models with the vsc-kernels ops.

  vsc train CONFIG [key=value ...] [--out DIR] [--resume] [--device DEV] [--full]
  vsc keys [CONFIG]              the override keys: type, default, help
  vsc configs                    the shipped configs
  vsc eval RUN_DIR               recompute a run's summary.json
  vsc table RUN_DIR [RUN_DIR ...]

CONFIG is a TOML/YAML/JSON file or the name of a shipped config (e.g. quick or
table1/thresholded_laplacian_J20). `vsc COMMAND --help` describes each command.
"""

from __future__ import annotations

import argparse
import json
import math
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
    args.out_dir = out
    runs.check_free(out)  # these two say so before the data are loaded
    if args.resume:
        runs.find_checkpoint(out)
    print(f"vsc train: {config.name or args.config} -> {out}", flush=True)
    summary = train(config, out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
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
    with runs.RunLock(run):
        trainer = Trainer(config, run, progress=False)
        trainer.load_checkpoint()
        summary = trainer.evaluate()
        write_json(run / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def _keys(args) -> int:
    from .config import Config, load_config
    from .overrides import describe_fields

    values = None
    if args.config:
        values = load_config(resolve_config_path(args.config)).to_dict()
    print(describe_fields(Config, values))
    print("\nSet any key on the command line: vsc train CONFIG key=value ... (TOML syntax: "
          "1e-3, true, \"max\"; none for an unset optional value).")
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
    p.set_defaults(func=_train)
    p = sub.add_parser("keys", help="list the config keys (types, defaults, help)",
                       description="List the keys `vsc train` accepts as key=value, with "
                       "their types, defaults (or CONFIG's values) and meaning.")
    p.add_argument("config", nargs="?", metavar="CONFIG", help="show this config's values")
    p.set_defaults(func=_keys)
    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=lambda a: print("\n".join(shipped_configs())) or 0)
    p = sub.add_parser("eval", help="re-evaluate a run directory (rewrites summary.json)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--device", metavar="DEV")
    p.set_defaults(func=_eval)
    p = sub.add_parser("table", help="Table-1-style summary of run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.set_defaults(func=lambda a: print(table(a.run_dirs)) or 0)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    prefix = f"vsc {args.command}"
    try:
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
    except FloatingPointError as error:  # a diverged run: its checkpoint is intact
        print(f"{prefix}: {error}", file=sys.stderr)
        return 1
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
