"""CelebA (Liu et al., 2015) from its standard folder layout.

Put the aligned-and-cropped images and the two text files of the official release
(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) in one folder::

    img_align_celeba/000001.jpg ... 202599.jpg
    list_attr_celeba.txt        # line 1: count; line 2: the 40 names; then "000001.jpg -1 1 ..."
    list_eval_partition.txt     # "000001.jpg 0" (0 = train, 1 = validation, 2 = test)

(torchvision's layout ``ROOT/celeba/`` is found too when ``ROOT`` is given.)

What the paper does (Appendix E), and what this loader does:

* split sizes 150,000 training / 19,000 validation images (``train_size``, ``val_size``);
  membership from the official partition file: training images are partition 0 and
  validation images partition ``val_partition`` (default 1, the official validation
  partition; the paper's public code took torchvision's ``split='test'``, partition 2 --
  pass ``val_partition=2`` to match it), each in the file's order, truncated to the size.
  With the default sizes, a partition holding fewer images (a subset of CelebA) is used
  whole, with a warning saying so; an explicit size larger than the partition is an error.
* every image is center-cropped to 140x140 (offsets ``round((w - 140) / 2)``,
  ``round((h - 140) / 2)``: 19 and 39 for CelebA's 178x218) and resized to 64x64 with
  PIL's bilinear filter (antialiased), the same pixels as torchvision's
  ``CenterCrop(140)`` + ``Resize(64)`` on PIL images; values ``uint8 / 255``;
* a random horizontal flip on training images only (see :mod:`vsc.datasets._base` for how
  each flip is drawn);
* the 40 binary attributes, ``-1 -> 0`` and ``1 -> 1``.

Decoding: images are decoded lazily with PIL in ``__getitem__`` (DataLoader workers decode in
parallel; the dataset pickles without any image data). Decoding 150,000 JPEGs every epoch
costs CPU time, so ``cache_dir=PATH`` (opt-in) decodes the split once into a uint8 ``.npy``
of shape (N, 3, 64, 64) (1.8 GB for 150,000 images), written atomically and keyed by a hash
of the image names, their file sizes and the preprocessing; later loads memory-map it, and
workers share its pages.

Errors name the file: a missing folder or text file, a malformed line, an image listed but
absent, an image without attributes, an unreadable image (raised when it is decoded).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_output, cache_root
from ._base import ImageDataset

__all__ = ["CelebADataset", "load_celeba", "find_celeba_folder", "CELEBA_SPLIT_SIZES",
           "CELEBA_IMAGE_FOLDER", "CELEBA_ATTR_FILE", "CELEBA_PARTITION_FILE",
           "read_partition_file", "read_attribute_file", "decode_celeba_image"]

#: The paper's split sizes (Appendix E).
CELEBA_SPLIT_SIZES = {"train": 150_000, "val": 19_000}
CELEBA_IMAGE_FOLDER = "img_align_celeba"
CELEBA_ATTR_FILE = "list_attr_celeba.txt"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CROP = 140
SIZE = 64
#: Bump when the preprocessing changes: cached arrays then miss.
CACHE_VERSION = 1


def find_celeba_folder(path: Path) -> Path | None:
    """The folder holding CelebA: ``path`` itself or torchvision's ``path/celeba``, the
    first that holds any of the image folder, the attribute file or the partition file."""
    for folder in (path, path / "celeba"):
        if any((folder / name).exists()
               for name in (CELEBA_IMAGE_FOLDER, CELEBA_ATTR_FILE, CELEBA_PARTITION_FILE)):
            return folder
    return None


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise ValueError(f"{path}: missing CelebA {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the CelebA {what} ({exc})") from None


def read_partition_file(path: Path) -> tuple[list[str], np.ndarray]:
    """``(names, partitions)`` from ``list_eval_partition.txt``, in file order."""
    names, parts = [], []
    for lineno, line in enumerate(_read_lines(path, "partition file"), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}: line {lineno} is not '<image> <0|1|2>': {line!r}")
        names.append(fields[0])
        parts.append(int(fields[1]))
    if not names:
        raise ValueError(f"{path}: the partition file lists no images")
    return names, np.asarray(parts, dtype=np.int64)


def read_attribute_file(path: Path) -> tuple[list[str], dict[str, int], np.ndarray]:
    """``(attribute_names, row_of_image, values)`` from ``list_attr_celeba.txt``;
    ``values`` is uint8 (n, 40) in {0, 1} (the file's -1 -> 0)."""
    lines = _read_lines(path, "attribute file")
    if len(lines) < 2:
        raise ValueError(f"{path}: truncated attribute file (needs a count line and a "
                         f"line of attribute names)")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{path}: line 1 should be the image count, got {lines[0]!r}") from None
    names = lines[1].split()
    if not names:
        raise ValueError(f"{path}: line 2 should name the attributes, got {lines[1]!r}")
    a = len(names)
    rows: dict[str, int] = {}
    values = []
    for lineno, line in enumerate(lines[2:], 3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != a + 1 or any(v not in ("-1", "1") for v in fields[1:]):
            raise ValueError(f"{path}: line {lineno} is not '<image>' followed by {a} values "
                             f"-1/1: {line[:80]!r}")
        rows[fields[0]] = len(values)
        values.append([v == "1" for v in fields[1:]])
    if len(values) != count:
        raise ValueError(f"{path}: line 1 announces {count} images, the file lists "
                         f"{len(values)}")
    return names, rows, np.asarray(values, dtype=np.uint8).reshape(len(values), a)


def decode_celeba_image(path: str | Path) -> np.ndarray:
    """One image: center crop 140x140, bilinear resize to 64x64; uint8 (3, 64, 64).
    ValueError naming the file when it cannot be decoded or is smaller than the crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from None
    w, h = img.size
    if w < CROP or h < CROP:
        raise ValueError(f"{path}: image is {w}x{h}, smaller than the {CROP}x{CROP} crop")
    left, top = int(round((w - CROP) / 2.0)), int(round((h - CROP) / 2.0))
    img = img.crop((left, top, left + CROP, top + CROP)).resize((SIZE, SIZE), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def _check_size(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1 or None, got {value!r}")
    return int(value)


def default_cache_dir() -> Path:
    """``$VSC_CACHE/celeba`` if ``VSC_CACHE`` is set, else ``~/.cache/vsc/celeba``."""
    return cache_root() / "celeba"


class CelebADataset(ImageDataset):
    """One CelebA split (module docstring); items are float32 (3, 64, 64) in [0, 1] and
    float32 (40,) attributes."""

    name = "celeba"
    image_shape = (3, SIZE, SIZE)

    def __init__(self, folder: str | Path, split: str, seed: int = 0, hflip: bool | None = None,
                 *, train_size: int | None = None, val_size: int | None = None,
                 val_partition: int = 1, cache_dir: str | Path | bool | None = None) -> None:
        if hflip is None:
            hflip = split == "train"
        super().__init__(split=split, seed=seed, hflip=hflip)
        folder = Path(folder)
        self.source = str(folder)
        train_size = _check_size("train_size", train_size)
        val_size = _check_size("val_size", val_size)
        if val_partition not in (1, 2):
            raise ValueError(f"val_partition: expected 1 (official validation) or 2 (official "
                             f"test, as the paper's public code), got {val_partition!r}")
        image_dir = folder / CELEBA_IMAGE_FOLDER
        if not image_dir.is_dir():
            raise ValueError(f"{image_dir}: missing CelebA image folder")
        names, parts = read_partition_file(folder / CELEBA_PARTITION_FILE)
        attr_path = folder / CELEBA_ATTR_FILE
        attr_names, attr_rows, attr_values = read_attribute_file(attr_path)

        partition = 0 if split == "train" else val_partition
        requested = train_size if split == "train" else val_size
        members = [n for n, p in zip(names, parts) if p == partition]
        if requested is None:
            size = CELEBA_SPLIT_SIZES[split]
            if len(members) < size:
                warnings.warn(f"CelebA {split}: partition {partition} of "
                              f"{folder / CELEBA_PARTITION_FILE} lists {len(members)} images, "
                              f"fewer than the paper's {size}; using all {len(members)}",
                              stacklevel=3)
        else:
            size = requested
            if len(members) < size:
                raise ValueError(f"{'train_size' if split == 'train' else 'val_size'}: "
                                 f"{size} requested but partition {partition} of "
                                 f"{folder / CELEBA_PARTITION_FILE} lists {len(members)} images")
        members = members[:size]
        if not members:
            raise ValueError(f"{folder / CELEBA_PARTITION_FILE}: partition {partition} "
                             f"({split}) lists no images")

        present = set(os.listdir(image_dir))
        for n in members:
            if n not in present:
                raise ValueError(f"{image_dir / n}: missing image (listed in "
                                 f"{CELEBA_PARTITION_FILE})")
            if n not in attr_rows:
                raise ValueError(f"{attr_path}: no attributes for image {n}")
        rows = np.fromiter((attr_rows[n] for n in members), dtype=np.int64, count=len(members))
        self.attribute_names = list(attr_names)
        self._attributes = torch.from_numpy(attr_values[rows].astype(np.float32))
        self.image_names = members
        self.image_dir = image_dir
        self.partition = partition

        self.cache_path: Path | None = None
        self._cache: np.ndarray | None = None
        if cache_dir:
            root = default_cache_dir() if cache_dir is True else Path(cache_dir)
            self.cache_path = self._build_cache(root)

    # ---- decoding
    def __len__(self) -> int:
        return len(self.image_names)

    def _image(self, index: int) -> torch.Tensor:
        if self.cache_path is not None:
            if self._cache is None:  # opened lazily: once per process (worker)
                self._cache = np.load(self.cache_path, mmap_mode="r")
            arr = np.array(self._cache[index])
        else:
            arr = decode_celeba_image(self.image_dir / self.image_names[index])
        return torch.from_numpy(arr).to(torch.float32).div_(255.0)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None  # a memmap would pickle its whole content
        return state

    # ---- the opt-in decoded cache
    def _cache_key(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"version": CACHE_VERSION, "crop": CROP, "size": SIZE,
                             "n": len(self.image_names)}).encode())
        for n in self.image_names:
            h.update(n.encode())
            h.update(b"\0")
            h.update(str((self.image_dir / n).stat().st_size).encode())
            h.update(b"\0")
        return h.hexdigest()[:16]

    def _build_cache(self, root: Path) -> Path:
        shape = (len(self), *self.image_shape)
        path = root / f"celeba_{self.split}_{len(self)}_{self._cache_key()}.npy"
        if path.is_file():
            try:
                arr = np.load(path, mmap_mode="r")
                if arr.shape == shape and arr.dtype == np.uint8:
                    return path
            except (OSError, ValueError):
                pass
            warnings.warn(f"ignoring unreadable CelebA cache {path}; rebuilding it", stacklevel=4)
        with atomic_output(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for i, n in enumerate(self.image_names):
                out[i] = decode_celeba_image(self.image_dir / n)
            out.flush()
            del out
        return path


def load_celeba(folder: str | Path, split: str, seed: int = 0, hflip: bool | None = None,
                **options) -> CelebADataset:
    """One CelebA split; ``options``: ``train_size``, ``val_size``, ``val_partition``,
    ``cache_dir`` (see :class:`CelebADataset`)."""
    allowed = {"train_size", "val_size", "val_partition", "cache_dir"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"options: unknown CelebA option(s) {unknown}; allowed: {sorted(allowed)}")
    return CelebADataset(folder, split, seed=seed, hflip=hflip, **options)
