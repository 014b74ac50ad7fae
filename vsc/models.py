"""Networks of the linear-generator experiment (section 4.1, Appendix D).

* :class:`InferenceNetwork` -- the MLP backbone of Table 3 (256-512-1024-512-256,
  ReLU) with one extra ``256 x 256`` linear head per distribution parameter.
* :class:`LinearGenerator` -- the dictionary ``A`` (``D x d``), ``x ~ A z``
  (eq. 12); the training loss adds ``kappa ||A||_F^2`` (eqs. 10, 11).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class InferenceNetwork(nn.Module):
    def __init__(self, input_dim: int = 256, latent_dim: int = 256,
                 heads: tuple[str, ...] = ("mu", "logb"),
                 hidden: tuple[int, ...] = (512, 1024, 512, 256)):
        super().__init__()
        layers, width = [], input_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.backbone = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(width, latent_dim) for name in heads})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {name: head(features) for name, head in self.heads.items()}


class LinearGenerator(nn.Module):
    """``A`` with unit-norm random columns at initialization."""

    def __init__(self, data_dim: int = 256, latent_dim: int = 256):
        super().__init__()
        weight = torch.randn(data_dim, latent_dim)
        self.A = nn.Parameter(weight / weight.norm(dim=0, keepdim=True))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.A.T

    def frobenius_penalty(self) -> torch.Tensor:
        return self.A.square().sum()


def patch_side(dim: int) -> int:
    side = math.isqrt(dim)
    if side * side != dim:
        raise ValueError(f"data dimension {dim} is not a square patch")
    return side
