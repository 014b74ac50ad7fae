"""The embedded default: scikit-learn's handwritten digits brought to Fashion-MNIST's layout.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 handwritten digits (values 0..16,
from the UCI "Optical Recognition of Handwritten Digits" set) inside the package, so the
whole DNN pipeline runs without any download. Each digit is brought to 28x28 like MNIST's
layout (the digit in a 20x20 box centered in a 28x28 frame):

1. values divided by 16 (-> [0, 1]);
2. bilinear upsampling 8x8 -> 20x20 (``torch.nn.functional.interpolate``,
   ``align_corners=False``, no antialiasing: it is an upsampling), which stays in [0, 1];
3. 4 zero pixels of padding on every side -> 28x28.

Split (fixed, the same for every seed): in each class, the items at 30 evenly spaced
positions of the class's index list (``numpy.linspace(0, n_c - 1, 30)`` rounded down) are
validation: 300 validation digits (30 per class) and 1,497 training digits.

Attributes: the one-vs-rest indicators ``digit_0`` .. ``digit_9`` of the class label.
"""

from __future__ import annotations

import numpy as np
import torch

from ._base import TensorImageDataset

__all__ = ["load_digits", "DIGITS_VAL_PER_CLASS", "DIGIT_NAMES", "digits_split_indices"]

#: Validation digits taken from each of the 10 classes.
DIGITS_VAL_PER_CLASS = 30
DIGIT_NAMES = [f"digit_{c}" for c in range(10)]
_BOX, _FRAME = 20, 28


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


def digits_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of the fixed split described in the module docstring."""
    labels = np.asarray(labels)
    val = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        pos = np.floor(np.linspace(0, len(members) - 1, DIGITS_VAL_PER_CLASS)).astype(np.int64)
        val.append(members[pos])
    val = np.sort(np.concatenate(val))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def digits_to_28(images8: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) values 0..16 -> float32 (N, 1, 28, 28) in [0, 1] (steps 1-3 above)."""
    x = torch.as_tensor(images8, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(_BOX, _BOX), mode="bilinear",
                                        align_corners=False)
    pad = (_FRAME - _BOX) // 2
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    return x.clamp_(0.0, 1.0).contiguous()


def load_digits(split: str, seed: int = 0, hflip: bool = False) -> TensorImageDataset:
    """The embedded digits (module docstring): 1,497 training or 300 validation images,
    float32 (1, 28, 28). ``hflip`` is off by default (digits are not mirror-symmetric)."""
    images8, labels = _raw_digits()
    train_idx, val_idx = digits_split_indices(labels)
    idx = train_idx if split == "train" else val_idx
    images = digits_to_28(images8[idx])
    attributes = torch.nn.functional.one_hot(torch.as_tensor(labels[idx]), 10).to(torch.float32)
    return TensorImageDataset("digits", images, attributes, DIGIT_NAMES, split=split, seed=seed,
                              hflip=hflip, class_names=[str(c) for c in range(10)],
                              source="embedded")
