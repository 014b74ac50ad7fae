"""Test configuration.

TRITON_INTERPRET must be set before any ``@triton.jit`` module is imported: on a
machine without a GPU the Triton kernels then run on CPU tensors, through the
same code path as on the GPU. Triton tests run on CUDA tensors when a GPU is
present.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property tests then fail to import, loudly
    pass
else:
    # "ci" (default): derandomized, so every run checks the same examples; no example
    # database in the working tree. "explore": 10x the examples, fresh random ones.
    settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                              print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("explore", max_examples=1000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    import vsc_kernels._dispatch as dispatch

    return (f"torch {torch.__version__}, cuda={torch.cuda.is_available()}, "
            f"triton installed={dispatch.triton_installed()}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
