"""pytest-benchmark configuration of the benchmark suite (``pytest bench/ --benchmark-only``).

Not part of the CI test run (``pyproject.toml`` sets ``testpaths = ["tests"]``). Options:

``--bench-device cuda|cpu``  default: CUDA when available
``--bench-quick``            the ``--quick`` shapes of the op scripts (minutes on 2 CPU cores)

Results: unless ``--benchmark-storage`` is given, runs are saved (``--benchmark-autosave``)
under ``bench/results/pytest-benchmark/<device type>/``, one JSON per run, so that
``--benchmark-compare`` (the latest saved run, or ``--benchmark-compare=NNNN``) shows the
change between two commits on the same device, and ``--benchmark-compare-fail=median:10%``
turns a regression into a failure. Each benchmark's ``extra_info`` holds its group's
parameters, GB/s or TFLOP/s, the fraction of the hardware limit and the speedups against
the baselines of its group (filled in for every member when the JSON is written).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "pytest-benchmark"


def pytest_addoption(parser):
    group = parser.getgroup("vsc-kernels benchmarks")
    group.addoption("--bench-device", default=None,
                    help="device of the benchmarks (default: cuda if available, else cpu)")
    group.addoption("--bench-quick", action="store_true",
                    help="the op scripts' --quick shapes")


def bench_device(config) -> torch.device:
    name = config.getoption("--bench-device")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if not hasattr(config.option, "benchmark_storage"):
        return  # pytest-benchmark is not installed: the suite skips itself
    if config.option.benchmark_storage in (None, "file://./.benchmarks"):
        config.option.benchmark_storage = f"file://{RESULTS / bench_device(config).type}"
    if not (config.option.benchmark_save or config.option.benchmark_autosave
            or config.option.benchmark_disable):
        from pytest_benchmark.utils import get_tag

        config.option.benchmark_autosave = get_tag()   # what --benchmark-autosave stores


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """The environment of the run (device, versions, load; kept out of machine_info, which
    --benchmark-compare compares) and the speedups of every member of a group against the
    group's baselines (medians)."""
    from bench import common

    output_json["vsc_kernels_environment"] = common.environment(bench_device(config))
    groups: dict[str, dict[str, float]] = {}
    for bench in output_json["benchmarks"]:
        info = bench.get("extra_info", {})
        if bench.get("stats") and "provider" in info:
            groups.setdefault(bench["group"], {})[info["provider"]] = bench["stats"]["median"]
    for bench in output_json["benchmarks"]:
        info = bench.get("extra_info", {})
        times = groups.get(bench["group"], {})
        if not bench.get("stats") or "provider" not in info:
            continue
        for baseline in info.get("baselines", ()):
            if baseline in times:
                info[f"speedup_vs_{baseline}"] = times[baseline] / bench["stats"]["median"]
