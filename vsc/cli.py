"""``vsc`` command line.

    vsc train CONFIG [key=value ...] [--out DIR] [--resume] [--device DEV] [--full]
    vsc eval RUN_DIR
    vsc table [--table2] RUN_DIR [RUN_DIR ...]
    vsc dictionaries RUN_DIR [RUN_DIR ...] --out FIGURE.png

``CONFIG`` is a TOML/YAML file or the name of a shipped config (``vsc configs``
lists them, e.g. ``quick`` or ``table1/thresholded_laplacian_J20``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

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
    print(f"vsc train: {config.name or args.config} -> {out}", flush=True)
    summary = train(config, out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def _table(args) -> int:
    print(table2(args.run_dirs) if args.table2 else table(args.run_dirs))
    return 0


def _dictionaries(args) -> int:
    print(dictionaries(args.run_dirs, args.out))
    return 0


def _eval(args) -> int:
    from .train import CHECKPOINT, Trainer, write_json

    run = Path(args.run_dir)
    config_path = run / "config.json"
    if not (run / CHECKPOINT).exists() or not config_path.exists():
        raise FileNotFoundError(f"{run} holds no finished or checkpointed run "
                                f"({CHECKPOINT}, config.json)")
    config = load_config(config_path, [f'device="{args.device}"'] if args.device else [])
    trainer = Trainer(config, run, progress=False)
    trainer.load_checkpoint(run / CHECKPOINT)
    summary = trainer.evaluate()
    write_json(run / "summary.json", summary)
    print(json.dumps(summary, indent=2))
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
    labels = list(dict.fromkeys(label for label, _ in groups))
    budgets = sorted({J for _, J in groups})
    header = ["Method/Prior"] + [f"{title} J={J}" for _, title in TABLE_COLUMNS for J in budgets]
    rows = []
    for label in labels:
        row = [label]
        for key, _ in TABLE_COLUMNS:
            for J in budgets:
                runs = groups.get((label, J), [])
                row.append(_mean_std([r.get(key) for r in runs]) + (f" (n={len(runs)})"
                                                                      if len(runs) > 1 else ""))
        rows.append(row)
    scale = " / ".join("0.5 ||x - Az||^2" if w == 0.5 else "||x - Az||^2" for w in sorted(weights))
    return (_format_table(header, rows) + f"\nValidation loss: {scale} + 20 ||z||_1 per patch "
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
    labels = list(dict.fromkeys(label for label, _ in groups))
    budgets = sorted({J for _, J in groups})
    header = ["Method/Prior"] + [f"{title} J={J}" for _, title in TABLE2_COLUMNS for J in budgets]
    rows = []
    for label in labels:
        row = [label]
        for key, _ in TABLE2_COLUMNS:
            for J in budgets:
                runs = groups.get((label, J), [])
                finished = [r.get(key) for r in runs if not r.get("diverged")]
                nan = len(runs) - len(finished)
                cell = _mean_std(finished) if finished else ("NaN" if runs else "-")
                if finished and nan:
                    cell += f", NaN in {nan}"
                row.append(cell + (f" (n={len(runs)})" if len(runs) > 1 else ""))
        rows.append(row)
    return _format_table(header, rows) + (
        "\nNaN: the run stopped on a non-finite loss or gradient (its diverged.json). "
        "SG: the exact subgradient of eq. (2); ST: straight-through (eq. 4, or the public "
        "code's variant under convention=\"public_code\").")


def dictionaries(run_dirs: list[str], out: str) -> Path:
    """One figure with each run's dictionary (Figure 3 / 18), titled by its method."""
    import torch

    from . import plots
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
        panels.append((label, state["generator"]["A"]))
    return plots.plot_dictionaries(panels, out)


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
    p.set_defaults(func=_train)
    p = sub.add_parser("eval", help="re-evaluate a run directory")
    p.add_argument("run_dir")
    p.add_argument("--device")
    p.set_defaults(func=_eval)
    p = sub.add_parser("table", help="Table-1-style summary of run directories")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--table2", action="store_true",
                   help="posterior and feature collapse per estimator (Table 2)")
    p.set_defaults(func=_table)
    p = sub.add_parser("dictionaries", help="the runs' dictionaries side by side (Figure 18)")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.set_defaults(func=_dictionaries)
    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=lambda a: print("\n".join(shipped_configs())) or 0)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"vsc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:   # a diverged run (its diverged.json says where)
        print(f"vsc {args.command}: diverged: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
