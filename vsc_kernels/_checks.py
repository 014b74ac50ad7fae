"""Argument checks shared by the ops: clear errors that name the argument, raised
before any kernel runs."""

from __future__ import annotations

import math
import numbers
import os

import torch

SKIP_VALUE_CHECKS_ENV = "VSC_KERNELS_SKIP_VALUE_CHECKS"
CHECK_VALUES_ENV = "VSC_KERNELS_CHECK_VALUES"


def value_checks_enabled() -> bool:
    """Checks that read tensor values (a host sync on CUDA); off under torch.compile
    or with ``VSC_KERNELS_SKIP_VALUE_CHECKS=1``."""
    if torch.compiler.is_compiling():
        return False
    return os.environ.get(SKIP_VALUE_CHECKS_ENV, "0") != "1"


def value_checks_requested() -> bool:
    """Opt-in checks of tensor values on paths that skip them by default because they would
    synchronise with the device (``VSC_KERNELS_CHECK_VALUES=1``; never under torch.compile)."""
    if torch.compiler.is_compiling():
        return False
    return os.environ.get(CHECK_VALUES_ENV, "0") == "1"


def float_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    return value


def same_device(name: str, value: torch.Tensor, reference_name: str, reference: torch.Tensor):
    if value.is_cpu and reference.is_cpu:
        return
    if value.device != reference.device:
        raise ValueError(f"{name} is on {value.device} but {reference_name} is on "
                         f"{reference.device}; move them to one device")


def choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def real_number(name: str, value, *, minimum: float | None = None, positive: bool = False) -> float:
    if type(value) is float and value == value and value != math.inf and value != -math.inf:
        # the common case, without the numbers.Real machinery
        if positive and value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
        if minimum is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def optional_count(name: str, value, *, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if type(value) is int and value >= minimum:  # the common case, without numbers.Integral
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def generator(name: str, value) -> torch.Generator | None:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(value).__name__}")
    return value


def broadcastable(name: str, value: torch.Tensor, shape: tuple[int, ...], what: str):
    try:
        broadcast = torch.broadcast_shapes(tuple(value.shape), shape)
    except RuntimeError:
        broadcast = None
    if broadcast != tuple(shape):
        raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to {what} "
                         f"{tuple(shape)}")


def non_negative_values(name: str, value: torch.Tensor):
    if value_checks_enabled() and value.numel():
        if bool(torch.isnan(value).any()):
            raise ValueError(f"{name} contains NaN")
        if bool((value < 0).any()):
            raise ValueError(f"{name} must be >= 0 everywhere, got a minimum of "
                             f"{value.min().item():g}")


def finite_non_negative_values(name: str, value: torch.Tensor):
    """``value`` holds no NaN, no inf and nothing negative (one host read when it passes)."""
    if value_checks_enabled() and value.numel():
        if bool((torch.isfinite(value) & (value >= 0)).all()):
            return
        if bool(torch.isnan(value).any()):
            raise ValueError(f"{name} contains NaN")
        if bool(torch.isinf(value).any()):
            raise ValueError(f"{name} contains inf (a threshold must be finite)")
        raise ValueError(f"{name} must be >= 0 everywhere, got a minimum of "
                         f"{value.min().item():g}")
