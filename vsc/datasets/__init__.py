"""Image data sets of the DNN-generator experiments (section 4.2, Appendix E).

One file per data set, one interface (:class:`ImageDataset`):

* :mod:`vsc.datasets.digits`        -- the embedded default (scikit-learn's 8x8 digits at 28x28);
* :mod:`vsc.datasets.fashion_mnist` -- Fashion-MNIST from its four IDX files;
* :mod:`vsc.datasets.celeba`        -- CelebA from its standard folder layout.

:func:`load_image_dataset` picks the loader from its ``data`` argument.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._base import SPLITS, ImageDataset, TensorImageDataset, flip_decision
from .digits import load_digits

__all__ = ["load_image_dataset", "detect_dataset", "ImageDataset", "TensorImageDataset",
           "flip_decision", "load_digits", "SPLITS"]

#: The value of ``data`` that selects the embedded digits.
EMBEDDED = "digits"


def detect_dataset(data) -> tuple[str, Path | None]:
    """``(kind, folder)`` for a ``data`` argument: ``("digits", None)`` for ``"digits"``,
    otherwise ``("fashion_mnist" | "celeba", folder)`` from the files found in the folder.
    Raises ValueError naming the path and what was expected."""
    if isinstance(data, str) and data == EMBEDDED:
        return "digits", None
    if not isinstance(data, (str, os.PathLike)):
        raise ValueError(f"data: expected 'digits' or a folder path, got {data!r}")
    from . import celeba, fashion_mnist

    path = Path(data).expanduser()
    if not path.exists():
        raise ValueError(f"data: {str(data)!r} is neither 'digits' (the embedded set) nor an "
                         f"existing folder")
    if not path.is_dir():
        raise ValueError(f"data: {path} is a file; expected 'digits' or a folder holding "
                         f"Fashion-MNIST's IDX files or CelebA's files")
    folder = celeba.find_celeba_folder(path)
    if folder is not None:
        return "celeba", folder
    folder = fashion_mnist.find_fashion_mnist_folder(path)
    if folder is not None:
        return "fashion_mnist", folder
    raise ValueError(
        f"data: {path} holds neither Fashion-MNIST (train-images-idx3-ubyte[.gz], "
        f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) "
        f"nor CelebA (img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt)")


def load_image_dataset(data, split: str, seed: int = 0, *, hflip: bool | None = None,
                       **options) -> ImageDataset:
    """Load one split of a data set.

    Args:
        data: ``"digits"`` (the embedded default), or the path of a folder holding
            Fashion-MNIST's four IDX files or CelebA's files (detected from the files; see
            :func:`detect_dataset`).
        split: ``"train"`` or ``"val"``.
        seed: seed of the random horizontal flips (the data and the split do not depend
            on it).
        hflip: random horizontal flips; default ``None`` = the paper's choice (CelebA's
            training split only). Never allowed on the validation split.
        options: loader-specific keyword arguments (CelebA: ``train_size``, ``val_size``,
            ``val_partition``, ``cache_dir``). ``cache_dir`` is accepted for every data set
            and ignored by the in-memory ones (digits, Fashion-MNIST), so that a trainer can
            pass it whatever the data; any other option they reject.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    kind, folder = detect_dataset(data)
    if hflip is None:
        hflip = kind == "celeba" and split == "train"
    elif hflip and split != "train":
        raise ValueError("hflip: random flips apply to the training split only")
    if kind != "celeba":
        options.pop("cache_dir", None)
    if kind == "digits":
        if options:
            raise ValueError(f"options: the embedded digits take none, got {sorted(options)}")
        return load_digits(split, seed=seed, hflip=hflip)
    if kind == "fashion_mnist":
        from .fashion_mnist import load_fashion_mnist

        if options:
            raise ValueError(f"options: Fashion-MNIST takes none, got {sorted(options)}")
        return load_fashion_mnist(folder, split, seed=seed, hflip=hflip)
    from .celeba import load_celeba

    return load_celeba(folder, split, seed=seed, hflip=hflip, **options)
