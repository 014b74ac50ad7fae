"""Side by side: the speedups of ``vsc_kernels`` in two result folders (e.g. before and
after a change), per op, shape and mode, read from the JSON files the scripts write.

    python bench/compare_results.py bench/results/before bench/results/after

Speedups are against the baselines measured in the same run (interleaved), which is what
stays comparable across runs on a shared machine; absolute times are shown as well.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("B", "J", "d", "D", "F", "N", "dtype", "method", "mode", "op", "density")
PROVIDER = "vsc_kernels"


def load(folder: Path) -> dict:
    rows = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        op = data.get("op", path.stem)
        env = data.get("environment", {})
        for row in data.get("results", []):
            if row.get("provider") != PROVIDER:
                continue
            key = (path.stem,) + tuple((k, row[k]) for k in KEYS if k in row)
            rows[key] = dict(row, _op=op, _load=env.get("load_average"),
                             _threads=data.get("threads", env.get("cpu_threads")),
                             _clock=data.get("clock", "perf_counter"))
    return rows


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = load(args.before), load(args.after)
    print(f"{'file / case':78s} {'ms before':>10s} {'ms after':>10s} "
          f"{'x compiled':>16s} {'x eager':>16s}")
    for key in sorted(set(before) | set(after), key=str):
        b, a = before.get(key, {}), after.get(key, {})
        label = key[0] + " " + " ".join(f"{k}={v}" for k, v in key[1:])
        speed_c = (f"{_fmt(b.get('speedup_vs_compiled'), '.2f')} -> "
                   f"{_fmt(a.get('speedup_vs_compiled'), '.2f')}")
        speed_e = (f"{_fmt(b.get('speedup_vs_eager', b.get('speedup_vs_torch_eager')), '.2f')} -> "
                   f"{_fmt(a.get('speedup_vs_eager', a.get('speedup_vs_torch_eager')), '.2f')}")
        t_b = b.get("time_ms", b.get("time_s", 0) * 1e3 if "time_s" in b else None)
        t_a = a.get("time_ms", a.get("time_s", 0) * 1e3 if "time_s" in a else None)
        print(f"{label[:78]:78s} {_fmt(t_b, '10.3f')} {_fmt(t_a, '10.3f')} "
              f"{speed_c:>16s} {speed_e:>16s}")


if __name__ == "__main__":
    main()
