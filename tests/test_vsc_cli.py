"""The CLI as a user meets it: bad overrides get one line each (key, value, what is
expected) and exit code 2, never a traceback; --resume with nothing to resume says so;
Ctrl-C / SIGTERM save a checkpoint at the current step and print the resume command;
a second run on the same --out is refused while the first is alive; a damaged
checkpoint is named and the previous one used."""

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vsc import runs
from vsc.cli import main
from vsc.config import QUICK, Config
from vsc_kernels._extension import cpp_available

SMALL = dict(n_train=400, n_val=200, batch_size=50, num_samples=4, eval_rows=100, iwae_k=8,
             snr_samples=4, jaccard_passes=4, fista_max_iter=60, warmup_step=2e-2,
             warmup_delay=0, tau_decay=0.99, fista_warmup_step=2e-2)


@pytest.fixture(scope="module")
def small_toml(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "small.toml"
    values = {**SMALL, "cache_dir": str(folder / "patches"), "prior": "thresholded_laplacian"}
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


@pytest.mark.parametrize("overrides,expected", [
    (["epochs=abc"], ["epochs=abc: expected an integer"]),
    (["epochs=2.5"], ["epochs=2.5: expected an integer"]),
    (["fista_lambda=abc"], ["fista_lambda=abc: expected a finite number"]),
    (["beta=nan"], ["beta=nan: expected a finite number"]),
    (["learn_threshold=yes"], ["learn_threshold=yes: expected true or false"]),
    (["sampling=best"], ["sampling=best: expected one of 'max', 'avg', 'iwae'"]),
    (["threshold=low"], ["threshold=low: expected a finite number or none"]),
    (["fista_lambd=3"], ["fista_lambd=3: unknown key; did you mean fista_lambda?"]),
    (["epochs"], ["override 'epochs' is not key=value"]),
    (["epochs=abc", "seed=1.5", "batch=3"], ["epochs=abc: expected an integer",
                                             "seed=1.5: expected an integer",
                                             "batch=3: unknown key"]),
    (['device="tpu"'], ["device='tpu': expected a torch device"]),
    (["epochs=0"], ["epochs must be >= 1, got 0"]),
])
def test_every_bad_override_gets_one_line_and_exit_code_2(overrides, expected, tmp_path, capsys):
    assert main(["train", "quick", *overrides, "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == len(expected), captured.err
    for line, text in zip(lines, expected):
        assert line.startswith("vsc train: error: config: ") and text in line, line
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_good_overrides_take_their_types():
    from vsc.config import load_config
    from vsc.cli import resolve_config_path

    config = load_config(resolve_config_path("quick"), ["epochs=1e1", "name=2024", "seed=3.0",
                                                        "threshold=none", "kappa=1", "lr_encoder=2"])
    assert (config.epochs, config.name, config.seed, config.threshold) == (10, "2024", 3, None)
    assert isinstance(config.kappa, float) and isinstance(config.lr_encoder, float)
    with pytest.raises(ValueError, match="epochs=2.5: expected an integer"):
        Config(epochs=2.5)  # a config built in Python is checked as well


def test_help_is_plain_text_and_lists_how_to_find_the_keys(capsys):
    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "``" not in text and ":func:" not in text and ":class:" not in text
    assert "vsc keys" in text and "--resume" in text and "--out DIR" in text
    assert main(["keys"]) == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(Config):
        assert re.search(rf"^{field.name} +\S", text, re.M), field.name
    assert re.search(r"^epochs +int +300 ", text, re.M)
    assert re.search(r"^sampling +str +\"max\" +one of max, avg, iwae", text, re.M)
    assert main(["keys", "quick"]) == 0
    text = capsys.readouterr().out     # the values quick sets: the quick schedule's epochs,
    assert re.search(rf"^epochs +int +{QUICK['epochs']} ", text, re.M)  # its own beta
    assert re.search(r"^beta +float +0.001 ", text, re.M)


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys):
    for out in (tmp_path, tmp_path / "missing"):
        assert main(["train", "quick", "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert "nothing to resume" in err and str(out) in err and "Traceback" not in err
    assert main(["eval", str(tmp_path)]) == 2
    assert "no run" in capsys.readouterr().err


def _start(small_toml, out, epochs=200):
    # Build the C++ kernels here first: a child that builds them inside its first step
    # (minutes on a loaded machine) would not reach the end of the step in time.
    cpp_available()
    argv = ["train", str(small_toml), f"epochs={epochs}", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-m", "vsc.cli", *argv], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    # config.json is written inside the signal handler's block, just before step 1.
    while not (out / "config.json").exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)
    return argv, child


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_current_step_and_prints_the_resume_command(small_toml, tmp_path,
                                                                       capsys, signum):
    out = tmp_path / "run"
    argv, child = _start(small_toml, out)
    try:
        time.sleep(1.0)
        # While it runs, a second run on the same folder is refused.
        assert main(["train", str(small_toml), "epochs=200", "--out", str(out),
                     "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"in use by pid {child.pid}" in err and "another --out" in err
        child.send_signal(signum)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    stopped = re.search(r"stopped by (\w+); checkpoint saved at step (\d+): (\S+)", stderr)
    assert stopped and stopped[1] == signal.Signals(signum).name, stderr
    state = torch.load(stopped[3], weights_only=False)
    assert state["step"] == int(stopped[2]) > 0
    command = re.search(r"resume with: (.*)", stderr)[1]
    # started as `python -m vsc.cli`: resumed the same way (the `vsc` script says `vsc`)
    assert shlex.split(command) == ["python", "-m", "vsc.cli", *argv, "--resume"]
    assert not (out / runs.LOCK).exists()


def test_resume_falls_back_from_a_damaged_checkpoint(small_toml, tmp_path, capsys):
    from vsc.config import load_config
    from vsc.train import Trainer

    out = tmp_path / "run"
    overrides = ['method="fista"', "epochs=2"]
    argv = ["train", str(small_toml), *overrides, "--out", str(out), "--no-progress", "--resume"]
    # Killed at step 12 of 16: checkpoints at the end of epoch 1 (step 8) and at step 12.
    Trainer(load_config(small_toml, overrides), out, progress=False).fit(stop_after_steps=12)
    assert torch.load(out / runs.PREVIOUS, weights_only=False)["step"] == 8
    data = (out / runs.CHECKPOINT).read_bytes()
    (out / runs.CHECKPOINT).write_bytes(data[:len(data) // 2])  # a truncated copy
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"{out / runs.CHECKPOINT} is truncated or corrupt" in err
    assert f"resuming from the previous good checkpoint {out / runs.PREVIOUS}" in err
    assert json.loads((out / "summary.json").read_text())["steps"] == 16
    # Both damaged: a clear error naming the files, exit code 2.
    for name in (runs.CHECKPOINT, runs.PREVIOUS):
        (out / name).write_bytes(b"")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is truncated or corrupt" in err and "checkpoint.prev.pt" in err
    assert "Traceback" not in err


def test_ctrl_c_before_training_starts_is_one_line(tmp_path):
    """While torch loads (the first seconds), a Ctrl-C ends the command quietly.

    The child reports "ready" from inside ``main``'s own error handling (by wrapping the
    command runner it calls), so the signal lands while the command imports torch and
    builds its data. Any earlier, the interpreter or the test's own ``-c`` line is still
    running and prints its own traceback, which no code of ours can prevent (a fixed sleep,
    and then a "ready" printed before ``main`` was entered, both hit that window on a
    loaded CI machine).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    program = ("import sys, vsc.cli\n"
               "run = vsc.cli._run\n"
               "def announced(*args):\n"
               "    print('ready', flush=True)\n"
               "    return run(*args)\n"
               "vsc.cli._run = announced\n"
               f"sys.exit(vsc.cli.main(['train', 'quick', '--out', {str(tmp_path / 'run')!r}]))\n")
    child = subprocess.Popen([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert child.returncode == 130, (child.returncode, stderr)
    assert re.fullmatch(r"vsc( train)?: interrupted", stderr.strip()), stderr
