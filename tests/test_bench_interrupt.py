"""A benchmark stopped at SIGINT (bench/gpu_check.sh's per-step limits) keeps the groups it
finished: run_cases returns them and the result file is marked ``"interrupted": true``."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402


@pytest.fixture
def fresh_flag(monkeypatch):
    monkeypatch.setattr(common, "interrupted", False)


def _case(name, call):
    return common.Case(op="toy", params={"n": name}, providers=("eager", "vsc_kernels"),
                       build=lambda: {"eager": call, "vsc_kernels": call},
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
    assert "interrupted" not in common.payload("toy", cpu, rows)
