"""The compute dtype of every op: float32 for float16/bfloat16/float32 inputs, float64
for float64 inputs (used by the gradient checks)."""

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
