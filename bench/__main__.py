"""Every benchmark table in one command: ``python -m bench [--quick] [--device cpu|cuda]``.

Runs bench/overhead.py, threshold_sample.py, elbo_select.py, linear_elbo.py, fista.py and
sparse_decode.py in turn (the same as running each script), printing their tables and
writing their JSON files to bench/results/ (or ``--out``). ``--quick`` passes each
script's ``--quick``; ``--only`` picks scripts. The pytest-benchmark form of the same
cases is ``pytest bench/ --benchmark-only`` (see bench/conftest.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (common, elbo_select, fista, linear_elbo, overhead,  # noqa: E402
                   sparse_decode, threshold_sample)

SCRIPTS = {"overhead": overhead, "threshold_sample": threshold_sample,
           "elbo_select": elbo_select, "linear_elbo": linear_elbo, "fista": fista,
           "sparse_decode": sparse_decode}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        argv_script = ["--quick"] if args.quick else []
        if args.device:
            argv_script += ["--device", args.device]
        if args.out:
            argv_script += ["--out", args.out]
        if args.no_save:
            argv_script += ["--no-save"]
        if name == "fista" and args.quick:
            argv_script += ["--max-iter", "100", "--sklearn-rows", "100"]
        print(f"\n=== {name} ({' '.join(argv_script)}); load {common.load_average()}",
              flush=True)
        start = time.perf_counter()
        try:
            SCRIPTS[name].main(argv_script)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other tables
            failed.append(name)
            print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
        print(f"=== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
