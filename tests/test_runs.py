"""Run-directory infrastructure (vsc.runs): one live run per folder, a lock left by a
killed run recovered, checkpoints that a crash or a damaged file cannot take away,
SIGINT/SIGTERM turned into a flag."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from vsc import runs

HOLD = textwrap.dedent("""
    import sys, time
    from vsc.runs import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


def _hold_lock(out_dir):
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(out_dir)], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_run_refuses_while_the_first_is_alive_and_a_dead_runs_lock_is_recovered(tmp_path):
    child = _hold_lock(tmp_path)
    try:
        with pytest.raises(runs.RunLocked, match=rf"in use by pid {child.pid} .*another --out"):
            with runs.RunLock(tmp_path):
                pass
        assert runs.run_holder(tmp_path)["pid"] == child.pid
    finally:
        child.kill()
        child.wait()
    # The killed holder's lock file is still there, naming a dead pid ...
    assert (tmp_path / runs.LOCK).exists() and runs.run_holder(tmp_path)["pid"] == child.pid
    # ... and is taken over at once.
    with runs.RunLock(tmp_path):
        assert runs.run_holder(tmp_path)["pid"] == os.getpid()
        with pytest.raises(runs.RunLocked):  # not re-entrant: a second run in-process too
            with runs.RunLock(tmp_path):
                pass
    assert not (tmp_path / runs.LOCK).exists()


def _state(step):
    return {"step": step, "weights": torch.full((64, 64), float(step))}


def test_save_keeps_the_previous_checkpoint(tmp_path):
    runs.save_checkpoint(_state(1), tmp_path)
    assert not (tmp_path / runs.PREVIOUS).exists()
    runs.save_checkpoint(_state(2), tmp_path)
    runs.save_checkpoint(_state(3), tmp_path)
    assert torch.load(tmp_path / runs.CHECKPOINT)["step"] == 3
    assert torch.load(tmp_path / runs.PREVIOUS)["step"] == 2
    assert {p.name for p in tmp_path.iterdir()} == {runs.CHECKPOINT, runs.PREVIOUS}


def test_a_crash_while_writing_leaves_both_checkpoints_intact(tmp_path, monkeypatch):
    runs.save_checkpoint(_state(1), tmp_path)
    runs.save_checkpoint(_state(2), tmp_path)

    def dies_half_way(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the kill arrives mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        runs.save_checkpoint(_state(3), tmp_path)
    monkeypatch.undo()
    state, path = runs.load_checkpoint(tmp_path)
    assert (state["step"], path.name) == (2, runs.CHECKPOINT)
    assert torch.load(tmp_path / runs.PREVIOUS)["step"] == 1
    assert {p.name for p in tmp_path.iterdir()} == {runs.CHECKPOINT, runs.PREVIOUS}


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "empty", "garbage"])
def test_a_corrupt_checkpoint_names_the_file_and_falls_back_to_the_previous_one(tmp_path, damage):
    runs.save_checkpoint(_state(1), tmp_path)
    runs.save_checkpoint(_state(2), tmp_path)
    path = tmp_path / runs.CHECKPOINT
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:len(data) * 2 // 3]
    elif damage == "flip_bytes":  # inside the tensor's data: torch.load alone reads it fine
        start = data.index(b"\x00\x00\x80?") if b"\x00\x00\x80?" in data else len(data) // 2
        data[start:start + 8] = b"\xff" * 8
    elif damage == "empty":
        data = b""
    else:
        data = b"not a checkpoint\n" * 10
    path.write_bytes(bytes(data))
    lines = []
    state, used = runs.load_checkpoint(tmp_path, log=lines.append)
    assert (state["step"], used.name) == (1, runs.PREVIOUS)
    assert len(lines) == 1 and str(path) in lines[0] and "truncated or corrupt" in lines[0]
    assert (tmp_path / (runs.CHECKPOINT + ".corrupt")).exists() and not path.exists()
    # The next save starts a clean pair again.
    runs.save_checkpoint(_state(3), tmp_path)
    assert runs.load_checkpoint(tmp_path)[0]["step"] == 3


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    runs.save_checkpoint(_state(1), tmp_path)
    (tmp_path / runs.CHECKPOINT).write_bytes(b"PK\x03\x04")
    with pytest.raises(runs.CheckpointError, match="checkpoint.pt is truncated or corrupt.*no "
                                                   "previous checkpoint"):
        runs.load_checkpoint(tmp_path)
    runs.save_checkpoint(_state(1), tmp_path / "b")
    runs.save_checkpoint(_state(2), tmp_path / "b")
    for name in (runs.CHECKPOINT, runs.PREVIOUS):
        (tmp_path / "b" / name).write_bytes(b"")
    with pytest.raises(runs.CheckpointError, match="checkpoint.pt .*previous one is unreadable "
                                                   "too .*checkpoint.prev.pt"):
        runs.load_checkpoint(tmp_path / "b")
    assert (tmp_path / "b" / runs.CHECKPOINT).exists()  # nothing renamed when nothing loads


def test_nothing_to_resume(tmp_path):
    with pytest.raises(runs.NothingToResume, match="holds no checkpoint"):
        runs.load_checkpoint(tmp_path)
    with pytest.raises(runs.NothingToResume, match="does not exist"):
        runs.find_checkpoint(tmp_path / "missing")
    assert isinstance(runs.NothingToResume("x"), FileNotFoundError)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_become_a_flag_inside_the_block(signum, capsys):
    before = signal.getsignal(signum)
    with runs.StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signum)
        assert stop.requested and stop.signum == signum
        interrupted = stop.interrupted(17, None)
    assert signal.getsignal(signum) is before
    assert interrupted.exit_code == 128 + signum
    assert str(interrupted) == f"stopped by {signal.Signals(signum).name}; no checkpoint written"
    assert signal.Signals(signum).name in capsys.readouterr().err


def test_a_second_ctrl_c_aborts():
    with runs.StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT


def test_resume_command():
    assert runs.resume_command(["train", "quick", "seed=1"], "runs/quick_seed1") == \
        "vsc train quick seed=1 --out runs/quick_seed1 --resume"
    assert runs.resume_command(["train", "my cfg.toml", "--out", "r", "--resume"], "r") == \
        "vsc train 'my cfg.toml' --out r --resume"
