"""A benchmark stopped at SIGINT (bench/gpu_check.sh's per-step limits) keeps the groups it
finished, and the rounds of the group it was in that every provider finished:
run_cases returns them and the result file is marked ``"interrupted": true``."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402


@pytest.fixture
def fresh_flag(monkeypatch):
    monkeypatch.setattr(common, "interrupted", False)


def _case(name, call, eager=None):
    return common.Case(op="toy", params={"n": name}, providers=("eager", "vsc_kernels"),
                       build=lambda: {"eager": eager or call, "vsc_kernels": call},
                       work=None, unit="bytes")


def _stop():
    raise KeyboardInterrupt


def test_an_interrupted_run_keeps_the_finished_groups(fresh_flag, tmp_path, capsys):
    cpu = torch.device("cpu")
    cases = [_case(1, lambda: None), _case(2, _stop), _case(3, lambda: None)]
    rows = common.run_cases(cases, cpu, rounds=2, round_seconds=0.0, verbose=False)
    assert [(r["n"], r["provider"]) for r in rows] == [(1, "eager"), (1, "vsc_kernels")]
    assert all(r["speedup_vs_eager"] > 0 for r in rows)
    assert "interrupted" in capsys.readouterr().out
    path = common.write_results("toy", cpu, common.payload("toy", cpu, rows), directory=tmp_path)
    saved = path.read_text()
    assert '"interrupted": true' in saved and '"n": 1' in saved


def test_a_complete_run_is_not_marked(fresh_flag, tmp_path):
    cpu = torch.device("cpu")
    rows = common.run_cases([_case(1, lambda: None)], cpu, rounds=2, round_seconds=0.0,
                            verbose=False)
    assert len(rows) == 2
    path = common.write_results("toy", cpu, common.payload("toy", cpu, rows), directory=tmp_path)
    assert "interrupted" not in path.read_text()


def test_an_interrupt_within_a_group_keeps_the_rounds_every_provider_finished(fresh_flag):
    """Stopped in its third round, a group keeps the two rounds both providers finished,
    and run_cases stops after it."""
    calls = {"n": 0}

    def stops_in_round_three():
        calls["n"] += 1
        if calls["n"] == 6:  # 2 warm-up calls, 1 calibration call, then one per round
            raise KeyboardInterrupt

    seconds = common.time_interleaved(
        {"eager": lambda: None, "vsc_kernels": stops_in_round_three}, torch.device("cpu"),
        rounds=5, round_seconds=0.0)
    assert common.interrupted and set(seconds) == {"eager", "vsc_kernels"}

    common.interrupted = False
    calls["n"] = 0
    rows = common.run_cases([_case(1, stops_in_round_three, eager=lambda: None),
                             _case(2, lambda: None)],
                            torch.device("cpu"), rounds=5, round_seconds=0.0, verbose=False)
    assert common.interrupted and {r["n"] for r in rows} == {1}


def test_the_medians_of_an_interrupted_group_use_the_rounds_every_provider_finished(
        fresh_flag):
    with pytest.raises(KeyboardInterrupt):   # no round finished: nothing to keep
        common.interrupted_medians({"eager": [1.0], "vsc_kernels": []})
    assert not common.interrupted
    medians = common.interrupted_medians({"eager": [1.0, 2.0, 9.0], "vsc_kernels": [3.0, 5.0]})
    assert medians == {"eager": 1.5, "vsc_kernels": 4.0} and common.interrupted
