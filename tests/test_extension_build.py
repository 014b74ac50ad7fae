"""The C++ build (vsc_kernels._extension): a lock left by a killed build never hangs a
later process, a live builder is waited for with a bound and then named, the build
folder is keyed by what determines the binary, a build is announced."""

import json
import os
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch

from vsc_kernels import _extension
from vsc_kernels._filelock import PidLock

from _utils import require_backend


def _env(**extra):
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def _python(code, timeout, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=_env(**env))


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


LOAD = """
    from vsc_kernels._extension import load_extension
    assert load_extension() is not None
    print("loaded")
"""


@pytest.fixture
def unfinished_build():
    """The build folder as a build that has not finished leaves it: no ``built`` stamp
    (the objects and the module stay, so finishing it is a no-op for ninja)."""
    require_backend("cpp")  # built (or loaded) once in this process
    folder = _extension.build_directory()
    stamp = folder / _extension.BUILT_STAMP
    text = stamp.read_text() if stamp.exists() else None
    stamp.unlink(missing_ok=True)
    yield folder
    if text is not None and not stamp.exists():
        stamp.write_text(text)


def test_locks_left_by_a_killed_build_do_not_hang(unfinished_build):
    folder = unfinished_build
    baton = folder / _extension.TORCH_BATON
    ours = folder / _extension.BUILD_LOCK
    # What a build killed with SIGKILL leaves: torch's FileBaton file (torch waits on it
    # forever) and our lock file naming the dead builder.
    baton.touch()
    ours.write_text(json.dumps({"pid": _dead_pid(), "host": "here", "since": time.time()}))
    try:
        result = _python(LOAD, timeout=300)  # the code before this test hung here forever
    finally:
        baton.unlink(missing_ok=True)
    assert result.returncode == 0 and "loaded" in result.stdout, result.stderr
    assert f"removed {baton}, left by a build that was killed" in result.stderr
    assert not baton.exists() and not ours.exists()
    assert (folder / _extension.BUILT_STAMP).exists()


HOLD = """
    import sys, time
    from vsc_kernels._filelock import PidLock
    with PidLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
"""


def test_a_live_builder_is_waited_for_with_a_bound_then_named(unfinished_build):
    lock = unfinished_build / _extension.BUILD_LOCK
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD), str(lock)],
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = _python("""
            import torch, vsc_kernels
            from vsc_kernels._extension import BuildLockTimeout
            try:
                vsc_kernels.threshold_sample(torch.zeros(2, 3), torch.zeros(2, 3), 0.1)
            except BuildLockTimeout as error:
                print(error)
        """, timeout=120, VSC_KERNELS_BUILD_TIMEOUT="2", VSC_KERNELS_BACKEND="auto")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr
    assert f"waiting for pid {holder.pid} " in result.stderr  # said once, while waiting
    message = result.stdout
    assert f"lock file {lock}" in message and f"kill {holder.pid}" in message
    assert "VSC_KERNELS_BUILD_TIMEOUT" in message and "VSC_KERNELS_BACKEND=reference" in message


def test_the_build_folder_is_keyed_by_what_determines_the_binary(tmp_path, monkeypatch):
    key = _extension.build_key()
    name = _extension.build_directory().name
    assert name.startswith(f"vsc_kernels_cpu_{sys.implementation.cache_tag}_torch")
    assert name.endswith(key[:16])
    # Another checkout with the same sources (another path) shares the build ...
    for checkout in ("a", "b"):
        copy = tmp_path / checkout / "csrc"
        copy.mkdir(parents=True)
        for path in _extension._source_files():
            (copy / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(_extension, "CSRC_DIR", tmp_path / "a" / "csrc")
    assert _extension.build_key() == key
    monkeypatch.setattr(_extension, "CSRC_DIR", tmp_path / "b" / "csrc")
    assert _extension.build_key() == key
    # ... and any change of a source or header, a flag, torch or $CXX gets its own.
    header = next((tmp_path / "b" / "csrc").glob("*.h"))
    header.write_bytes(header.read_bytes() + b"\n")
    assert _extension.build_key() != key
    monkeypatch.setattr(_extension, "CSRC_DIR", tmp_path / "a" / "csrc")
    monkeypatch.setattr(_extension, "EXTRA_CFLAGS", _extension.EXTRA_CFLAGS + ["-g"])
    assert _extension.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert _extension.build_key() != key and "torch2.99.0" in _extension.build_directory().name
    monkeypatch.undo()
    monkeypatch.setenv("CXX", "clang++")
    assert _extension.build_key() != key


def test_a_build_is_announced_once_and_compiles_staged_sources(tmp_path, monkeypatch, capsys):
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    calls = []

    module = types.SimpleNamespace(__file__="module.so")

    def fake_load(name, sources, build_directory, extra_include_paths, **kwargs):
        calls.append((name, sources, build_directory, extra_include_paths))
        return module

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    folder = _extension.build_directory()
    assert folder.parent == tmp_path
    assert _extension.build_and_load() is module
    assert "building the C++ kernels once, about 30 s" in capsys.readouterr().err
    assert (folder / _extension.BUILT_STAMP).exists()
    name, sources, build_directory, include = calls[0]
    assert build_directory == str(folder) and include == [str(folder / "src")]
    assert sorted(os.path.basename(s) for s in sources) == \
        sorted(p.name for p in _extension._source_files() if p.suffix == ".cpp")
    assert all(s.startswith(str(folder / "src")) for s in sources)
    # Built: later calls import the module directly, silently, without torch's load.
    monkeypatch.setattr(_extension, "_import", lambda folder: ("imported", folder))
    assert _extension.build_and_load() == ("imported", folder)
    assert len(calls) == 1 and capsys.readouterr().err == ""
    assert not (folder / _extension.BUILD_LOCK).exists()


def test_pid_lock_waits_for_a_release(tmp_path):
    path = tmp_path / "x.lock"
    waits = []
    with PidLock(path):
        with pytest.raises(RuntimeError, match="x.lock is held by pid"):
            PidLock(path, timeout=0.3, poll=0.05, on_wait=waits.append).acquire()
    assert len(waits) == 1 and waits[0]["pid"] == os.getpid()
    with PidLock(path, timeout=0):
        pass


def test_a_pinned_build_folder_rebuilds_when_the_sources_change(tmp_path, monkeypatch):
    """``$VSC_KERNELS_BUILD_DIR`` (editing csrc/): one folder, rebuilt (incrementally, by
    ninja) whenever the build key changes."""
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setenv(_extension.BUILD_DIR_ENV, str(tmp_path / "pinned"))
    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: calls.append(kwargs) or
                        types.SimpleNamespace(__file__="module.so"))
    monkeypatch.setattr(_extension, "_import", lambda folder: "imported")
    assert _extension.build_directory() == tmp_path / "pinned"
    _extension.build_and_load()
    assert _extension.build_and_load() == "imported" and len(calls) == 1
    monkeypatch.setenv("CXX", "another-compiler")  # any change of the key
    _extension.build_and_load()
    assert len(calls) == 2 and calls[1]["build_directory"] == str(tmp_path / "pinned")
    assert _extension.build_and_load() == "imported"
