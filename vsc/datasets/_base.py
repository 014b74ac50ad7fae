"""The dataset interface shared by the DNN-generator experiments (section 4.2, Appendix E).

Every data set is an :class:`ImageDataset`: a ``torch.utils.data.Dataset`` whose items are
``(image, attributes)``:

* ``image``: float32 ``(C, H, W)`` in [0, 1];
* ``attributes``: float32 ``(A,)`` in {0, 1}, the binary attributes of Figure 8.

Random horizontal flips (CelebA's training images, Appendix E) are a pure function of
``(seed, epoch, index)``: one Philox4x32-10 call (the generator of :mod:`vsc_kernels._philox`)
with key ``seed`` and counter ``(index, epoch)`` decides each flip, so the same item is
flipped the same way in every process, every DataLoader worker, every DDP rank and every
resumed run, whatever order the sampler visits the items in.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vsc_kernels._philox import philox4x32

__all__ = ["ImageDataset", "TensorImageDataset", "flip_decision", "SPLITS"]

#: The split names :func:`vsc.datasets.load_image_dataset` accepts.
SPLITS = ("train", "val")

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether item ``index`` is flipped in ``epoch`` of a run with ``seed``.

    Lane 0 of Philox4x32-10 with key ``seed`` (64 bits, two's complement) and counter
    ``(index_lo, index_hi, epoch_lo, epoch_hi)``; the item is flipped when its top bit is
    set (probability exactly 1/2 over counters).
    """
    s = int(seed) & _MASK64
    i = int(index) & _MASK64
    e = int(epoch) & _MASK64
    # philox4x32 is written with shifts, masks and products only, so it runs on Python
    # ints as well as on int64 tensors (~25 us per call here, no tensor overhead)
    x0, _, _, _ = philox4x32(i & _MASK32, i >> 32, e & _MASK32, e >> 32, s & _MASK32, s >> 32)
    return bool(x0 >> 31)


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                return int(value)
        except ImportError:  # pragma: no cover - numpy is a dependency
            pass
        raise ValueError(f"{name}: expected an int, got {value!r}")
    return value


class ImageDataset(torch.utils.data.Dataset):
    """Images in [0, 1] with binary attributes; see the module docstring.

    Attributes:
        name: ``"digits"``, ``"fashion_mnist"`` or ``"celeba"``.
        split: ``"train"`` or ``"val"``.
        image_shape: ``(C, H, W)``.
        attribute_names: the A names of the binary attributes (the columns of
            :meth:`attributes`).
        class_names: for single-label sets (digits, Fashion-MNIST) the class names, the
            attributes being their one-vs-rest indicators (exactly one is 1 per item);
            ``None`` for multi-label sets (CelebA).
        seed: the seed of the random flips.
        hflip: whether items are flipped at random (by default only CelebA's training split).
        source: ``"embedded"`` or the folder the files were read from.

    Subclasses implement ``__len__``, :meth:`_image` (one unflipped image) and set
    ``_attributes`` (an ``(N, A)`` float32 tensor).
    """

    name: str
    split: str
    image_shape: tuple[int, int, int]
    attribute_names: list[str]
    class_names: list[str] | None = None
    source: str = ""

    def __init__(self, *, split: str, seed: int, hflip: bool) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        self.split = split
        self.seed = _check_int("seed", seed)
        if not isinstance(hflip, bool):
            raise ValueError(f"hflip: expected a bool, got {hflip!r}")
        self.hflip = hflip
        self.epoch = 0

    # ---- subclass hooks
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _image(self, index: int) -> torch.Tensor:  # pragma: no cover - abstract
        """The unflipped image ``index`` as float32 (C, H, W) in [0, 1]."""
        raise NotImplementedError

    # ---- public interface
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random flips :meth:`__getitem__` applies.

        DataLoader workers hold copies of the dataset: call this before creating the
        epoch's iterator, and use ``persistent_workers=False`` (the default) when
        ``hflip`` is on, so that the workers see the new epoch.
        """
        epoch = _check_int("epoch", epoch)
        if epoch < 0:
            raise ValueError(f"epoch: must be >= 0, got {epoch}")
        self.epoch = epoch

    def is_flipped(self, index: int, epoch: int | None = None) -> bool:
        """Whether item ``index`` is flipped horizontally in ``epoch`` (default: the
        current epoch); always False when ``hflip`` is off."""
        if not self.hflip:
            return False
        return flip_decision(self.seed, self.epoch if epoch is None else epoch, index)

    def _index(self, index) -> int:
        n = len(self)
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise TypeError(f"index: expected an int, got {type(index).__name__}") from None
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {self.name} {self.split} "
                             f"with {n} items")
        return i

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index(index)
        image = self._image(i)
        if self.is_flipped(i):
            image = image.flip(-1)
        return image, self._attributes[i]

    def attributes(self) -> torch.Tensor:
        """All items' attributes, float32 ``(N, A)`` in {0, 1} (no image is decoded)."""
        return self._attributes

    def images(self, indices: Sequence[int] | torch.Tensor | None = None,
               flip: bool = False) -> torch.Tensor:
        """A batch of images, float32 ``(n, C, H, W)``: ``indices`` (default: all items),
        unflipped unless ``flip`` (then flipped as :meth:`__getitem__` would in the current
        epoch)."""
        if indices is None:
            indices = range(len(self))
        elif isinstance(indices, torch.Tensor):
            indices = indices.reshape(-1).tolist()
        out = torch.empty((len(indices), *self.image_shape), dtype=torch.float32)
        for k, index in enumerate(indices):
            i = self._index(index)
            img = self._image(i)
            out[k] = img.flip(-1) if flip and self.is_flipped(i) else img
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"image_shape={self.image_shape}, attributes={len(self.attribute_names)}, "
                f"hflip={self.hflip}, source={self.source!r})")


class TensorImageDataset(ImageDataset):
    """An :class:`ImageDataset` held in memory: uint8 images (scaled by 1/255 on access)
    or float32 images already in [0, 1]."""

    def __init__(self, name: str, images: torch.Tensor, attributes: torch.Tensor,
                 attribute_names: Sequence[str], *, split: str, seed: int, hflip: bool,
                 class_names: Sequence[str] | None = None, source: str = "") -> None:
        super().__init__(split=split, seed=seed, hflip=hflip)
        if images.dim() != 4:
            raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images: expected uint8 or float32, got {images.dtype}")
        if attributes.shape != (images.shape[0], len(attribute_names)):
            raise ValueError(f"attributes: expected shape {(images.shape[0], len(attribute_names))}, "
                             f"got {tuple(attributes.shape)}")
        self.name = name
        self._images = images.contiguous()
        self._attributes = attributes.to(torch.float32).contiguous()
        self.attribute_names = list(attribute_names)
        self.class_names = None if class_names is None else list(class_names)
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        self.source = source

    def __len__(self) -> int:
        return self._images.shape[0]

    def _image(self, index: int) -> torch.Tensor:
        img = self._images[index]
        return img.to(torch.float32).div_(255.0) if img.dtype == torch.uint8 else img.clone()

    def images(self, indices=None, flip: bool = False) -> torch.Tensor:
        if indices is None and not (flip and self.hflip):
            imgs = self._images
            return imgs.to(torch.float32).div_(255.0) if imgs.dtype == torch.uint8 else imgs.clone()
        return super().images(indices, flip)
