"""Fashion-MNIST (Xiao et al., 2017) from its four IDX files, gzipped or not.

Put the files of https://github.com/zalandoresearch/fashion-mnist in one folder::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]     (60,000 training items)
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]      (10,000 validation items)

(torchvision's layout ``ROOT/FashionMNIST/raw/`` is found too when ``ROOT`` is given.) As in
the paper (Appendix E) and its public code, all 60,000 training images are the training split
and the 10,000 test images the validation split; pixels are ``uint8 / 255``, no flips.

IDX format (big-endian): magic ``0x00000803`` (unsigned bytes, 3 dimensions) then the item
count, rows, columns for images; magic ``0x00000801`` then the count for labels; then the
bytes. Every check names the file: missing file, wrong magic number, image size other than
28x28, a file shorter or longer than its header says (truncation), image and label counts
that differ, labels outside 0..9, a gzip stream that is corrupt or cut short.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ._base import TensorImageDataset

__all__ = ["load_fashion_mnist", "read_idx", "find_fashion_mnist_folder",
           "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES"]

#: The 10 classes, in label order (their one-vs-rest indicators are the attributes).
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: split -> (images file, labels file), without the optional ``.gz``.
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_SIDE = 28


def _locate(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` if it exists (uncompressed is preferred), else ``folder/stem.gz``."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist_folder(path: Path) -> Path | None:
    """The folder holding Fashion-MNIST's files: ``path`` itself or torchvision's
    ``path/FashionMNIST/raw``; None when neither holds any of the four files."""
    for folder in (path, path / "FashionMNIST" / "raw"):
        stems = [s for pair in FASHION_MNIST_FILES.values() for s in pair]
        if folder.is_dir() and any(_locate(folder, s) is not None for s in stems):
            return folder
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except EOFError:
        raise ValueError(f"{path}: the gzip stream is truncated") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: not a valid gzip file ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped when its name ends in ``.gz``).

    Returns uint8 ``(n, rows, cols)`` for images (magic 0x803) or ``(n,)`` for labels
    (magic 0x801). Raises ValueError naming the file on a wrong magic number or a length
    that differs from the header's.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise ValueError(f"{path}: wrong IDX magic number 0x{magic:08X}, expected "
                         f"0x{expected_magic:08X}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) < expected:
        raise ValueError(f"{path}: truncated IDX file: header says {dims} -> {expected} bytes, "
                         f"file has {len(raw)}")
    if len(raw) > expected:
        raise ValueError(f"{path}: IDX file has {len(raw) - expected} bytes after the "
                         f"{dims} items its header announces")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(folder: str | Path, split: str, seed: int = 0,
                       hflip: bool = False) -> TensorImageDataset:
    """Fashion-MNIST's training (train-*) or validation (t10k-*) split from ``folder``:
    uint8 images held in memory, float32 (1, 28, 28) in [0, 1] on access."""
    folder = Path(folder)
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    paths = []
    for stem in (image_stem, label_stem):
        p = _locate(folder, stem)
        if p is None:
            raise ValueError(f"{folder / stem}: missing Fashion-MNIST file (also looked for "
                             f"{stem}.gz)")
        paths.append(p)
    image_path, label_path = paths
    images = read_idx(image_path, IDX_IMAGES_MAGIC)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise ValueError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, "
                         f"Fashion-MNIST's are {_SIDE}x{_SIDE}")
    labels = read_idx(label_path, IDX_LABELS_MAGIC)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{label_path}: {labels.shape[0]} labels but {image_path.name} has "
                         f"{images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{label_path}: label {int(labels.max())} outside 0..9")
    if images.shape[0] == 0:
        raise ValueError(f"{image_path}: holds no images")
    images_t = torch.from_numpy(images.copy())[:, None]
    attributes = torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)), 10)
    return TensorImageDataset("fashion_mnist", images_t, attributes.to(torch.float32),
                              FASHION_MNIST_CLASSES, split=split, seed=seed, hflip=hflip,
                              class_names=FASHION_MNIST_CLASSES, source=str(folder))
