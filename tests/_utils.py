"""Shared test helpers: backends under test, dtype tolerances, seeded calls, thread
counts."""

from __future__ import annotations

import contextlib

import pytest
import torch

import vsc_kernels
from vsc_kernels import _dispatch

KERNEL_BACKENDS = ("cpp", "triton")

# (dtype, atol, rtol) for outputs compared with the reference. Both sides compute in
# float32 and round once to the output dtype, so low-precision outputs agree to about one
# output ulp; float32 differs only by the last bits of log/sin/cos.
DTYPE_TOLERANCES = [
    (torch.float32, 1e-5, 1e-5),
    (torch.float16, 2e-3, 2e-3),
    (torch.bfloat16, 1.6e-2, 1.6e-2),
]


def backend_device(backend: str) -> torch.device:
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def require_backend(backend: str) -> torch.device:
    """Fail (not skip) when a kernel backend that CI must test is missing: a silent
    fallback to the reference would compare the reference with itself."""
    device = backend_device(backend)
    if backend == "cpp":
        assert _dispatch.cpp_available(), "the C++ extension failed to build"
    if backend == "triton":
        assert _dispatch.triton_installed(), "triton is not installed"
        if device.type == "cpu" and not _dispatch.triton_interpreted():
            pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    assert _dispatch.resolve_backend(backend, device.type) == backend
    return device


def seeded(seed: int, backend: str, *args, **kwargs):
    """Call threshold_sample with the default generator reset to ``seed``, so that every
    backend draws the same Philox key and offset."""
    device = args[0].device
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    return vsc_kernels.threshold_sample(*args, backend=backend, **kwargs)


@contextlib.contextmanager
def num_threads(n: int):
    """torch's intra-op thread count set to ``n`` inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
