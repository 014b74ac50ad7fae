"""Encoder and decoder of the DNN-generator experiments (section 4.2, Appendix E).

* ``"fmnist"`` -- Table 5 (28x28x1): four convolutions (64, 64, 128, 128 channels) to a
  128-dimensional feature; decoder ``Linear(d, 128)`` then four transposed convolutions
  (128, 64, 64, 1 channels) and a sigmoid.
* ``"celeba"`` -- Table 4 (64x64x3): five convolutions (64, 64, 128, 256, 256) to a
  256-dimensional feature; decoder ``Linear(d, 1024)`` reshaped to 256x2x2, then five
  transposed convolutions (128, 128, 64, 64, 3) and a sigmoid.

Every convolution but the decoder's last is followed by batch normalization and a ReLU.
Where the tables disagree with themselves (Table 5's last encoder row says "chan 64,
stride 2, pad 1" with "BatchNorm feat 128"; its output is 128-dimensional), the layers
follow the paper's public code (``model/feature_enc.py``), which the tests check layer by
layer against the tables' output sizes. The encoder has one linear head per distribution
parameter of the prior (``prior.heads``), as in the linear package: only the heads a prior
uses exist.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .batch_norm import BatchNorm2d

# (in_channels, out_channels, kernel, stride, padding) per layer; the first layer's
# in_channels is the image's channel count.
ARCHITECTURES = {
    "fmnist": {
        "image_shape": (1, 28, 28),
        "encoder": [(1, 64, 4, 2, 1), (64, 64, 4, 2, 1), (64, 128, 4, 1, 0),
                    (128, 128, 4, 2, 0)],
        "decoder_input": (128, 1, 1),
        "decoder": [(128, 128, 4, 2, 0), (128, 64, 4, 1, 0), (64, 64, 4, 2, 1),
                    (64, 1, 4, 2, 1)],
    },
    "celeba": {
        "image_shape": (3, 64, 64),
        "encoder": [(3, 64, 4, 2, 1), (64, 64, 4, 2, 1), (64, 128, 4, 2, 1),
                    (128, 256, 4, 2, 1), (256, 256, 4, 2, 0)],
        "decoder_input": (256, 2, 2),
        "decoder": [(256, 128, 4, 2, 1), (128, 128, 4, 2, 1), (128, 64, 4, 2, 1),
                    (64, 64, 4, 2, 1), (64, 3, 4, 2, 1)],
    },
}


def architecture_for(image_shape: tuple[int, int, int], name: str = "auto") -> str:
    """The architecture for images of ``image_shape`` (C, H, W): ``name`` if given (its
    input shape must match), else the table whose input shape it is."""
    image_shape = tuple(int(s) for s in image_shape)
    if name != "auto":
        if name not in ARCHITECTURES:
            raise ValueError(f"architecture must be 'auto' or one of {sorted(ARCHITECTURES)}, "
                             f"got {name!r}")
        expected = ARCHITECTURES[name]["image_shape"]
        if image_shape != expected:
            raise ValueError(f"architecture {name!r} takes images of shape {expected} "
                             f"(C, H, W); the data has {image_shape}")
        return name
    for key, spec in ARCHITECTURES.items():
        if spec["image_shape"] == image_shape:
            return key
    raise ValueError(f"no architecture takes images of shape {image_shape} (C, H, W); "
                     f"Table 5 takes (1, 28, 28), Table 4 (3, 64, 64)")


class Encoder(nn.Module):
    """``x (B, C, H, W)`` -> ``{head: (B, d)}`` for each head of the prior."""

    def __init__(self, architecture: str, latent_dim: int, heads: tuple[str, ...]):
        super().__init__()
        spec = ARCHITECTURES[architecture]
        layers = []
        for c_in, c_out, k, s, p in spec["encoder"]:
            layers += [nn.Conv2d(c_in, c_out, k, s, p), BatchNorm2d(c_out), nn.ReLU()]
        self.backbone = nn.Sequential(*layers)
        self.feature_dim = spec["encoder"][-1][1]
        self.heads = nn.ModuleDict({name: nn.Linear(self.feature_dim, latent_dim)
                                    for name in heads})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x).flatten(1)
        return {name: head(features) for name, head in self.heads.items()}


class Decoder(nn.Module):
    """``z (..., d)`` -> images ``(..., C, H, W)`` in [0, 1]: ``(B, J, d)`` codes decode
    as ``B*J`` images in one batch (so batch normalization sees all of them)."""

    def __init__(self, architecture: str, latent_dim: int):
        super().__init__()
        spec = ARCHITECTURES[architecture]
        self.image_shape = spec["image_shape"]
        self.input_shape = spec["decoder_input"]
        self.linear = nn.Linear(latent_dim, math.prod(self.input_shape))
        layers: list[nn.Module] = [nn.ReLU()]
        last = len(spec["decoder"]) - 1
        for i, (c_in, c_out, k, s, p) in enumerate(spec["decoder"]):
            layers.append(nn.ConvTranspose2d(c_in, c_out, k, s, p))
            layers += [BatchNorm2d(c_out), nn.ReLU()] if i < last else [nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.linear(z.reshape(-1, z.shape[-1])).reshape(-1, *self.input_shape)
        return self.layers(h).reshape(*lead, *self.image_shape)
