"""Shared benchmark plumbing: timing, peak memory, hardware limits, result files.

Every result file records the device, versions, shapes and dtypes, and the fraction of
the hardware limit reached, so that anyone can check a speed claim.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Nominal peak memory bandwidth (bytes/s) of GPUs we run on, by name fragment.
NOMINAL_BANDWIDTH = {
    "H100 80GB HBM3": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H200": 4.8e12,
    "A100-SXM4-80GB": 2.04e12,
    "A100-SXM4-40GB": 1.56e12,
}


# Set when a benchmark stopped at SIGINT (``timeout --signal=INT`` in bench/gpu_check.sh,
# or Ctrl-C): the script still prints and saves the groups it finished, and the rounds
# of the group it was in that every provider finished (time_interleaved), and the
# result file says it is partial.
interrupted = False


def stop_at_interrupt() -> None:
    """Called where a benchmark loop catches KeyboardInterrupt: note it and say so."""
    global interrupted
    if not interrupted:
        print("interrupted: keeping what was measured so far (the result file says "
              "\"interrupted\": true)", flush=True)
    interrupted = True


def unless_interrupted(fn: Callable[[], object]) -> object | None:
    """``fn()``, or None once the benchmark is interrupted (before or during the call): a
    measurement after the timed rounds that a stopped benchmark skips."""
    if interrupted:
        return None
    try:
        return fn()
    except KeyboardInterrupt:
        stop_at_interrupt()
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The clock of time_call (the hardware-limit measurements): scripts run with --cpu-time set
# it to time.process_time (apply_timing_options), so that limits and timings are measured
# alike.
CLOCK = time.perf_counter


def add_timing_options(parser, *, rounds: bool = True) -> None:
    """The options every timing script takes: ``--rounds`` (unless the script has its
    own), ``--threads``, ``--cpu-time``, ``--out`` and ``--no-save``."""
    if rounds:
        parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process CPU time (steadier with --threads 1 on a "
                             "busy machine)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--no-save", action="store_true")


def apply_timing_options(args):
    """Sets the thread count and the clock of :func:`time_call` from ``args``
    (:func:`add_timing_options`) and returns that clock (its ``__name__`` is what the
    results record)."""
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    return CLOCK


def time_call(fn, device: torch.device, *, warmup: int = 3, repeats: int = 20,
              min_seconds: float = 0.2) -> float:
    """Median time of ``fn()`` in seconds (:data:`CLOCK`; CUDA events on the GPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    start_all = time.perf_counter()
    while len(samples) < repeats or (time.perf_counter() - start_all < min_seconds
                                     and len(samples) < 10 * repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = CLOCK()
            fn()
            samples.append(CLOCK() - t0)
    return statistics.median(samples)


def time_interleaved(calls: dict, device: torch.device, *, rounds: int = 15,
                     round_seconds: float = 0.02, warmup: int = 2,
                     clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each of ``calls`` (name -> zero-argument callable),
    measured in interleaved rounds: every round times each call in turn (a batch of
    calls sized to about ``round_seconds``), so that a change of load on a shared machine
    hits every provider alike. CUDA: events around each batch. ``clock``: wall time by
    default; ``time.process_time`` (CPU time of the process) is steadier for single-thread
    runs on a loaded machine."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    batch = {}
    for name, fn in calls.items():  # calibrate the batch size from one timed call
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        once = max(time.perf_counter() - t0, 1e-7)
        batch[name] = max(1, min(10_000, int(round_seconds / once)))
    samples = {name: [] for name in calls}
    try:
        for _ in range(rounds):
            for name, fn in calls.items():
                n = batch[name]
                if device.type == "cuda":
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(n):
                        fn()
                    end.record()
                    end.synchronize()
                    samples[name].append(start.elapsed_time(end) / 1e3 / n)
                else:
                    t0 = clock()
                    for _ in range(n):
                        fn()
                    samples[name].append((clock() - t0) / n)
    except KeyboardInterrupt:
        return interrupted_medians(samples)
    return {name: statistics.median(v) for name, v in samples.items()}


def interrupted_medians(samples: dict[str, list[float]]) -> dict[str, float]:
    """The medians of the rounds that every provider finished before an interrupt (then
    :func:`stop_at_interrupt`; the caller stops after this group), or the interrupt again
    if no round was finished."""
    complete = min(len(v) for v in samples.values())
    if complete == 0:
        raise KeyboardInterrupt
    stop_at_interrupt()
    return {name: statistics.median(v[:complete]) for name, v in samples.items()}


def load_average() -> list[float] | None:
    """``uptime``'s 1, 5 and 15 minute load averages (None where unavailable)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def peak_memory(fn, device: torch.device) -> int | None:
    """Peak bytes allocated on the GPU during ``fn()`` beyond what was live before."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def measured_copy_bandwidth(device: torch.device, nbytes: int = 1 << 28) -> float:
    """Bytes/s of a large device-to-device copy (counting read + write): the practical
    memory-bandwidth ceiling on this machine."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = time_call(lambda: dst.copy_(src), device, warmup=2, repeats=10)
    return 2 * nbytes / seconds


def bandwidth_limit(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, value in NOMINAL_BANDWIDTH.items():
            if fragment in name:
                return value, f"nominal HBM bandwidth of {name}"
    return measured_copy_bandwidth(device), "measured device-to-device copy bandwidth"


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), None)
    except OSError:
        return platform.processor() or None


def environment(device: torch.device) -> dict:
    info = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average": load_average(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
    }
    try:
        from vsc_kernels import _extension

        ext = _extension.load_extension() if device.type == "cpu" else None
        info["cpp_kernels"] = (ext.cpu_capability() if ext is not None
                               and hasattr(ext, "cpu_capability") else None)
    except Exception:  # noqa: BLE001 - the record is informative only
        info["cpp_kernels"] = None
    try:
        import subprocess

        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        info["git_commit"] = None
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def write_results(name: str, device: torch.device, payload: dict, *,
                  directory: Path | None = None) -> Path:
    """``payload`` as ``<directory>/<name>_<device type>.json``, written atomically, marked
    ``"interrupted": true`` if the benchmark was stopped (:func:`stop_at_interrupt`)."""
    if interrupted:
        payload = {**payload, "interrupted": True}
    directory = RESULTS_DIR if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}_{device.type}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def add_speedups(rows: list[dict], group_keys: tuple[str, ...], baselines: tuple[str, ...],
                 time_key: str = "time_ms") -> list[dict]:
    """Add ``speedup_vs_<baseline>`` to every row: the time of the ``provider`` named
    ``baseline`` in the same group (rows equal on ``group_keys``) over the row's time."""
    for row in rows:
        times = {r["provider"]: r[time_key] for r in rows
                 if all(r[k] == row[k] for k in group_keys)}
        for baseline in baselines:
            row[f"speedup_vs_{baseline}"] = times[baseline] / row[time_key]
    return rows


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]):
    """``columns``: (key, header, format)."""
    headers = [h for _, h, _ in columns]
    cells = [[("-" if r.get(k) is None else format(r[k], f)) for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


# --------------------------------------------------------------------------------------
# Cases: one benchmark group (op, shape, dtype, mode) timed for every provider in it.
# The op scripts build them; run_cases prints the tables, bench/test_bench.py runs the
# same cases under pytest-benchmark.
# --------------------------------------------------------------------------------------

BASELINES = ("eager", "compiled")


@dataclass
class Case:
    """The same work done by several providers.

    ``build()`` allocates the inputs and returns ``{provider: zero-argument call}``;
    ``work`` is what one call must move or compute (``unit``: ``"bytes"`` -> GB/s, or
    ``"flops"`` -> TFLOP/s) and ``limit()`` the hardware limit in the same unit per second
    with its source. Speedups are against the ``baselines`` present in the group.
    """

    op: str
    params: dict
    providers: tuple[str, ...]
    build: Callable[[], dict]
    work: float | None
    unit: str
    limit: Callable[[], tuple[float, str]] | None = None
    baselines: tuple[str, ...] = BASELINES
    extra: dict = field(default_factory=dict)

    @property
    def group(self) -> str:
        return self.op + " " + " ".join(f"{k}={v}" for k, v in self.params.items())


def row_for(case: Case, provider: str, seconds: float) -> dict:
    """One result row: the case's parameters, the time, throughput and fraction of limit."""
    row = {**case.params, "provider": provider, "time_ms": seconds * 1e3}
    if case.work is not None:
        per_second = case.work / seconds
        if case.unit == "bytes":
            row["effective_GBps"] = per_second / 1e9
        else:
            row["TFLOPs"] = per_second / 1e12
        if case.limit is not None:
            limit, source = case.limit()
            row["fraction_of_limit"] = per_second / limit
            row["limit"] = limit
            row["limit_source"] = source
    row.update(case.extra)
    return row


def add_case_speedups(rows: list[dict], case: Case) -> list[dict]:
    times = {r["provider"]: r["time_ms"] for r in rows}
    for row in rows:
        for baseline in case.baselines:
            if baseline in times:
                row[f"speedup_vs_{baseline}"] = times[baseline] / row["time_ms"]
    return rows


def run_cases(cases: list[Case], device: torch.device, *, rounds: int = 15,
              round_seconds: float = 0.02, verbose: bool = True,
              clock=time.perf_counter) -> list[dict]:
    """Times every case's providers interleaved (see :func:`time_interleaved`) and returns
    one row per (case, provider) with speedups against the case's baselines."""
    rows = []
    try:
        for case in cases:
            calls = case.build()
            seconds = time_interleaved(calls, device, rounds=rounds,
                                       round_seconds=round_seconds, clock=clock)
            case_rows = [row_for(case, name, seconds[name]) for name in calls]
            rows.extend(add_case_speedups(case_rows, case))
            if verbose:
                best = {name: f"{s * 1e3:.3f} ms" for name, s in seconds.items()}
                print(f"  {case.group}: {best}", flush=True)
            del calls
            if interrupted:  # during this group's rounds: it keeps the finished ones
                break
    except KeyboardInterrupt:
        stop_at_interrupt()
    return rows


@functools.lru_cache(maxsize=None)
def cached_bandwidth_limit(device_str: str) -> tuple[float, str]:
    return bandwidth_limit(torch.device(device_str))


def payload(op: str, device: torch.device, rows: list[dict], **extra) -> dict:
    """A result file: the op, the environment (device, versions, load), the rows."""
    return {"op": op, "environment": environment(device), **extra, "results": rows}


def result_name(op: str, quick: bool) -> str:
    return f"{op}_quick" if quick else op
