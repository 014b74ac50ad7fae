"""The benchmark suite under pytest-benchmark: every case of the op scripts (overhead,
threshold_sample, elbo_select, linear_elbo, fista, sparse_decode), one benchmark per
(case, provider), grouped per op and shape with the eager and compiled baselines in the
same group. See bench/conftest.py for the options and where results are saved.

    pytest bench/ --benchmark-only --bench-quick
    pytest bench/ --benchmark-only --benchmark-compare       # against the last saved run
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from bench import (common, elbo_select, fista, linear_elbo, overhead,  # noqa: E402
                   sparse_decode, threshold_sample)
from bench.conftest import bench_device  # noqa: E402


def _cases(config):
    device = bench_device(config)
    quick = config.getoption("--bench-quick")
    return (overhead.cases(device) + threshold_sample.cases(device, quick)
            + elbo_select.cases(device, quick) + linear_elbo.cases(device, quick)
            + fista.cases(device, quick) + sparse_decode.cases(device, quick))


def pytest_generate_tests(metafunc):
    if "case_provider" in metafunc.fixturenames:
        params = [(case, provider) for case in _cases(metafunc.config)
                  for provider in case.providers]
        metafunc.parametrize("case_provider", params,
                             ids=[f"{c.group}-{p}".replace(" ", "-") for c, p in params])


_BUILT: dict[str, dict] = {}


def _calls(case: common.Case) -> dict:
    """The case's calls, built once for all its providers (the last case only)."""
    if case.group not in _BUILT:
        _BUILT.clear()
        _BUILT[case.group] = case.build()
    return _BUILT[case.group]


def test_benchmark(benchmark, case_provider, request):
    case, provider = case_provider
    device = bench_device(request.config)
    call = _calls(case)[provider]
    if device.type == "cuda":
        def timed():
            call()
            torch.cuda.synchronize(device)
    else:
        timed = call
    for _ in range(2):   # compile / warm caches outside the timed rounds
        timed()
    benchmark.group = case.group
    benchmark.extra_info.update(case.params, op=case.op, provider=provider, unit=case.unit,
                                baselines=list(case.baselines))
    benchmark(timed)
    if benchmark.stats is None:   # --benchmark-disable
        return
    row = common.row_for(case, provider, benchmark.stats.stats.median)
    benchmark.extra_info.update({k: v for k, v in row.items() if k not in case.params})
