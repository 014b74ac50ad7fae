"""Whitened natural-image patches for the linear-generator experiment.

Section 4.1 and Appendix D of Fallah & Rozell (ICML 2022) train a linear
generator on 80,000 training and 16,000 validation patches of 16x16 pixels cut
from the whitened natural images of Olshausen & Field (1996).  This module
prepares such patch sets from three kinds of source:

* ``"embedded"`` (the default): natural photographs that ship inside
  scikit-image (:data:`EMBEDDED_TRAIN`, :data:`EMBEDDED_VAL`); nothing is
  downloaded.
* a path to Olshausen's ``IMAGES.mat`` (variable ``IMAGES``, already whitened)
  or ``IMAGES_RAW.mat`` (variable ``IMAGESr``, raw, whitened here).
* a folder of image files (png, jpg, jpeg, tif, tiff, bmp).

The pipeline, one function per step:

1. images are read as grayscale float64 in [0, 1] (:func:`embedded_images`,
   :func:`load_images_mat`, :func:`load_image_folder`);
2. each image is whitened as Olshausen & Field did (:func:`whiten_image`):
   mean removed, filtered in the Fourier domain by
   ``R(f) = |f| exp(-(|f| / f0)^4)``, then scaled to unit variance;
3. images are split by image, never by patch, into training and validation
   images (the split is fixed and recorded in ``PatchSet.info``);
4. random ``patch_size x patch_size`` patches are cut (:func:`extract_patches`);
5. every pixel is standardized with the *training* mean and standard deviation,
   validation included (:func:`standardize`).

:func:`load_patches` runs the pipeline and caches the result on disk as an
``.npz`` keyed by a hash of every parameter and of the source.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_write

__all__ = [
    "PatchSet",
    "load_patches",
    "whiten_image",
    "extract_patches",
    "standardize",
    "embedded_images",
    "load_images_mat",
    "load_image_folder",
    "default_cache_dir",
    "EMBEDDED_TRAIN",
    "EMBEDDED_VAL",
    "IMAGE_SUFFIXES",
]

#: Bump when the pipeline changes in a way that changes the patches: old cache
#: entries then miss instead of returning stale data.
CACHE_VERSION = 1

#: Natural photographs bundled with scikit-image, used for training.  Each name
#: is a ``skimage.data`` loader, except ``motorcycle_left`` (the left view of
#: ``skimage.data.stereo_motorcycle()``).
#: ``moon`` and ``hubble_deep_field`` are bundled too but left out: whitening
#: shows ``moon``'s blocky (upsampled) pixels, and the Hubble field is mostly
#: sensor noise on black sky, not natural-scene statistics.
EMBEDDED_TRAIN = (
    "camera", "astronaut", "chelsea", "rocket", "motorcycle_left",
    "coins", "gravel", "brick",
)
#: Held-out photographs for validation: one scene (``coffee``) and one texture
#: (``grass``), never used for training.
EMBEDDED_VAL = ("coffee", "grass")

#: File suffixes read by :func:`load_image_folder` (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Olshausen's variable names: whitened (``IMAGES.mat``) and raw (``IMAGES_RAW.mat``).
_MAT_VARIABLES = {"IMAGES": True, "IMAGESr": False}

#: Pixels left out at each image border when cutting patches, as ``BUFF = 4`` in
#: Olshausen's sparsenet code: the Fourier-domain filter treats the image as
#: periodic, so a thin band at the edges carries wrap-around artifacts.
BORDER = 4


@dataclass
class PatchSet:
    """Standardized training and validation patches.

    Attributes:
        train: ``[n_train, patch_size**2]`` float32 tensor, rows are patches
            flattened in row-major order, each pixel standardized with the
            training statistics.
        val: ``[n_val, patch_size**2]`` float32 tensor, standardized with the
            same (training) statistics.
        mean: ``[patch_size**2]`` float32 per-pixel mean of the training patches
            before standardization.
        std: ``[patch_size**2]`` float32 per-pixel standard deviation of the
            training patches before standardization.
        source: ``"embedded"`` or the absolute path of the file or folder.
        info: what was used: ``train_images``, ``val_images`` (names),
            ``whiten``, ``seed``, ``patch_size``, ``n_train``, ``n_val``,
            ``f0_fraction``, ``border``, ``cache_path`` and ``cache_hit``.
    """

    train: torch.Tensor
    val: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    source: str
    info: dict = field(default_factory=dict)

    @property
    def patch_size(self) -> int:
        return int(self.info["patch_size"])


# --------------------------------------------------------------------------- #
# Whitening
# --------------------------------------------------------------------------- #

def whiten_image(image, f0_fraction: float = 0.4) -> np.ndarray:
    """Whiten one grayscale image as Olshausen & Field (1996) prepared theirs.

    The mean is subtracted, the image is filtered in the Fourier domain with

        R(f) = |f| * exp(-(|f| / f0)^4),

    where ``|f|`` is the radial spatial frequency on the 2-D frequency grid of
    the image's own shape (so non-square images are handled), and the result is
    scaled to **unit variance per image** (zero mean, ``var == 1``).  The ``|f|``
    ramp flattens the roughly ``1/f^2`` power spectrum of natural images; the
    ``exp(-(|f|/f0)^4)`` roll-off suppresses the highest frequencies, where
    noise and aliasing dominate.

    Frequencies are in cycles per pixel (Nyquist = 0.5) and
    ``f0 = f0_fraction`` cycles per pixel.  With the default 0.4 this is
    Olshausen's ``f_0 = 0.4 * N`` cycles per image for an ``N x N`` image, i.e.
    0.8 of the Nyquist frequency.  (Olshausen scaled all his images jointly to
    variance 0.1; the scale is irrelevant here because :func:`standardize`
    follows.)

    Args:
        image: 2-D array (any real dtype).
        f0_fraction: roll-off frequency in cycles per pixel, > 0.

    Returns:
        float64 array of the image's shape, zero mean and unit variance (all
        zeros for a constant image).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"whiten_image expects a 2-D grayscale image, got shape {image.shape}")
    if not f0_fraction > 0:
        raise ValueError(f"f0_fraction must be > 0, got {f0_fraction}")
    image = image - image.mean()
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    rho = np.sqrt(fx * fx + fy * fy)
    filt = rho * np.exp(-((rho / f0_fraction) ** 4))
    out = np.fft.irfft2(np.fft.rfft2(image) * filt, s=image.shape)
    out -= out.mean()  # the filter is zero at f = 0; this only removes round-off
    std = out.std()
    return out / std if std > 0 else out


# --------------------------------------------------------------------------- #
# Patches and standardization
# --------------------------------------------------------------------------- #

def extract_patches(images, n: int, patch_size: int, rng, border: int = BORDER) -> np.ndarray:
    """Cut ``n`` random square patches from a list of 2-D images.

    As in Olshausen's sparsenet code, each patch first picks an image uniformly
    at random (so every image contributes about equally, whatever its size),
    then a uniformly random top-left corner such that the patch stays ``border``
    pixels away from every edge.  Where an image is too small for that border
    the border shrinks for that image (down to 0).

    Args:
        images: sequence of 2-D arrays.
        n: number of patches, >= 1.
        patch_size: side of a patch, >= 1 and no larger than any image side.
        rng: a :class:`numpy.random.Generator` (or a seed for one).
        border: pixels kept free at each edge.

    Returns:
        float64 array ``[n, patch_size**2]``, each row a patch flattened in
        row-major order.
    """
    n = int(n)
    patch_size = int(patch_size)
    if n < 1:
        raise ValueError(f"number of patches must be >= 1, got {n}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    images = [np.asarray(im, dtype=np.float64) for im in images]
    if not images:
        raise ValueError("extract_patches needs at least one image")
    for i, im in enumerate(images):
        if im.ndim != 2:
            raise ValueError(f"image {i} is not 2-D (shape {im.shape})")
        if min(im.shape) < patch_size:
            raise ValueError(
                f"patch_size {patch_size} is larger than image {i} of shape {im.shape}")
    rng = np.random.default_rng(rng)
    which = rng.integers(len(images), size=n)
    out = np.empty((n, patch_size * patch_size), dtype=np.float64)
    offsets = np.arange(patch_size)
    for i, im in enumerate(images):
        rows = np.flatnonzero(which == i)
        if rows.size == 0:
            continue
        h, w = im.shape
        b = min(border, (h - patch_size) // 2, (w - patch_size) // 2)
        r0 = rng.integers(b, h - patch_size - b + 1, size=rows.size)
        c0 = rng.integers(b, w - patch_size - b + 1, size=rows.size)
        patches = im[(r0[:, None, None] + offsets[None, :, None]),
                     (c0[:, None, None] + offsets[None, None, :])]
        out[rows] = patches.reshape(rows.size, -1)
    return out


def standardize(train, val, eps: float = 1e-8):
    """Standardize every pixel with the training statistics.

    ``mean`` and ``std`` are taken per pixel (per column) over the training
    patches only; both sets are mapped by ``(x - mean) / std``, so validation
    patches are *not* standardized with their own statistics.  A pixel whose
    training std is below ``eps`` is divided by 1 instead.

    Args:
        train: ``[n_train, d]`` array.
        val: ``[n_val, d]`` array.

    Returns:
        ``(train_std, val_std, mean, std)`` as float64 numpy arrays; ``std`` is
        the raw standard deviation (before the ``eps`` guard).
    """
    train = np.asarray(train, dtype=np.float64)
    val = np.asarray(val, dtype=np.float64)
    if train.ndim != 2 or val.ndim != 2 or train.shape[1] != val.shape[1]:
        raise ValueError(f"standardize expects [n, d] arrays with equal d, got "
                         f"{train.shape} and {val.shape}")
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    scale = np.where(std > eps, std, 1.0)
    return (train - mean) / scale, (val - mean) / scale, mean, std


# --------------------------------------------------------------------------- #
# Image sources
# --------------------------------------------------------------------------- #

def _to_gray(image, name: str) -> np.ndarray:
    """Grayscale float64 in [0, 1] (integer images scaled by their dtype's range)."""
    from skimage import color, util

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = color.rgba2rgb(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = color.rgb2gray(image)
    elif image.ndim == 3 and image.shape[-1] in (1, 2):  # gray (+ alpha)
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"image {name!r} has unsupported shape {image.shape} "
                         "(expected gray, RGB or RGBA)")
    return util.img_as_float64(image)


def _embedded_loader(name: str):
    import skimage.data as skdata

    if name == "motorcycle_left":
        return lambda: skdata.stereo_motorcycle()[0]
    available = EMBEDDED_TRAIN + EMBEDDED_VAL
    if name not in available:
        raise ValueError(f"unknown embedded image {name!r}; available: {', '.join(available)}")
    return getattr(skdata, name)


def embedded_images(names=None) -> dict:
    """Load scikit-image's bundled photographs as grayscale float64 in [0, 1].

    Only images shipped inside the scikit-image package are used; nothing is
    downloaded (an image that scikit-image would have to fetch raises).

    Args:
        names: iterable of names from :data:`EMBEDDED_TRAIN` +
            :data:`EMBEDDED_VAL`; all of them when ``None``.

    Returns:
        ``{name: image}`` in the order given.
    """
    names = list(EMBEDDED_TRAIN + EMBEDDED_VAL) if names is None else list(names)
    out = {}
    for name in names:
        loader = _embedded_loader(name)
        try:
            image = loader()
        except Exception as exc:  # e.g. pooch missing / no network in an older skimage
            raise RuntimeError(f"embedded image {name!r} could not be loaded from the "
                               f"installed scikit-image: {exc}") from exc
        out[name] = _to_gray(image, name)
    return out


def load_images_mat(path):
    """Load Olshausen's ``IMAGES.mat`` or ``IMAGES_RAW.mat``.

    The variable name tells which: ``IMAGES`` holds images that are already
    whitened, ``IMAGESr`` raw ones.  Both are ``(height, width, n_images)``
    (512 x 512 x 10 in the original files).  Values are returned as float64,
    unscaled (the whitened images are not in [0, 1]).

    Returns:
        ``(images, already_whitened)`` with ``images`` a dict
        ``{"IMAGES[0]": array, ...}`` (0-based, in file order).
    """
    from scipy.io import loadmat

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such .mat file: {path}")
    try:
        data = loadmat(path)
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise ValueError(f"{path}: cannot read this .mat version ({exc}); "
                         "save it with MATLAB's -v7 option") from exc
    for var, whitened in _MAT_VARIABLES.items():
        if var in data:
            arr = np.asarray(data[var], dtype=np.float64)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            if arr.ndim != 3:
                raise ValueError(f"{path}: variable {var!r} has shape {arr.shape}, "
                                 "expected (height, width, n_images)")
            images = {f"{var}[{i}]": np.ascontiguousarray(arr[:, :, i])
                      for i in range(arr.shape[2])}
            return images, whitened
    found = sorted(k for k in data if not k.startswith("__"))
    raise ValueError(f"{path}: no known image variable (expected one of "
                     f"{', '.join(_MAT_VARIABLES)}; found {found or 'none'})")


def load_image_folder(path) -> dict:
    """Read every image file directly in a folder as grayscale float64 in [0, 1].

    Files with a suffix in :data:`IMAGE_SUFFIXES` (any case) are read with
    ``skimage.io.imread``, in sorted file-name order; subfolders are ignored.

    Returns:
        ``{file_name: image}`` sorted by file name.
    """
    from skimage import io

    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no such image folder: {path}")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {path} contains no images "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    return {p.name: _to_gray(io.imread(p), p.name) for p in files}


def _split_names(names):
    """Fixed split of a non-embedded source: the last ``max(1, n // 5)`` images
    (in file / sorted-name order) are held out for validation."""
    names = list(names)
    if len(names) < 2:
        raise ValueError(f"need at least 2 images to hold one out for validation, got {len(names)}")
    n_val = max(1, len(names) // 5)
    return names[:-n_val], names[-n_val:]


# --------------------------------------------------------------------------- #
# Cache
# --------------------------------------------------------------------------- #

def default_cache_dir() -> Path:
    """``$VSC_CACHE`` if set, else ``~/.cache/vsc/patches``."""
    env = os.environ.get("VSC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vsc" / "patches"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_fingerprint(kind: str, path: Path | None):
    """What identifies the source's content (part of the cache key)."""
    if kind == "embedded":
        import skimage
        return {"names": list(EMBEDDED_TRAIN + EMBEDDED_VAL), "skimage": skimage.__version__}
    if kind == "mat":
        return {"sha256": _file_digest(path)}
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return {p.name: _file_digest(p) for p in files}


def _atomic_savez(path: Path, **arrays) -> None:
    """Write an .npz atomically (temporary file, then ``os.replace``)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #

def _resolve_source(source):
    if isinstance(source, str) and source == "embedded":
        return "embedded", None
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"patch source not found: {path}")
    if path.is_dir():
        return "folder", path
    if path.suffix.lower() == ".mat":
        return "mat", path
    raise ValueError(f"unsupported patch source {path}: expected 'embedded', a .mat file "
                     "or a folder of images")


def load_patches(source="embedded", *, n_train: int = 80000, n_val: int = 16000,
                 patch_size: int = 16, seed: int = 0, cache_dir=None,
                 whiten=None) -> PatchSet:
    """Whitened, standardized natural-image patches (section 4.1, Appendix D).

    Args:
        source: ``"embedded"`` (scikit-image's photographs; validation images
            :data:`EMBEDDED_VAL`), a path to ``IMAGES.mat`` / ``IMAGES_RAW.mat``,
            or a folder of images.  For a .mat file or a folder the last
            ``max(1, n_images // 5)`` images (file order / sorted names) are
            held out for validation: 2 of the 10 images of Olshausen's file.
        n_train, n_val: numbers of patches, each >= 1.
        patch_size: side of a square patch (16 in the paper).
        seed: seeds the patch positions.  Training and validation draw from
            independent streams, so ``n_val`` does not change training patches.
        cache_dir: folder of the cache; default :func:`default_cache_dir`.
        whiten: apply :func:`whiten_image` to every image.  ``None`` means yes,
            except for ``IMAGES.mat`` (variable ``IMAGES``), which Olshausen
            whitened already.

    Returns:
        :class:`PatchSet`.  Patches are cached as ``<cache_dir>/<key>.npz``
        where the key hashes every parameter and the source's content; a cache
        hit reads the file and recomputes nothing.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("patch_size", patch_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    n_train, n_val, patch_size, seed = int(n_train), int(n_val), int(patch_size), int(seed)
    f0_fraction = 0.4

    kind, path = _resolve_source(source)
    source_str = "embedded" if kind == "embedded" else str(path)

    # Parameters that change the output; `whiten=None` is resolved below, after
    # a .mat file was opened, so the key holds the request, not the resolution.
    key_params = {
        "version": CACHE_VERSION, "kind": kind,
        "source": _source_fingerprint(kind, path),
        "n_train": n_train, "n_val": n_val, "patch_size": patch_size, "seed": seed,
        "whiten": whiten if whiten is None else bool(whiten),
        "f0_fraction": f0_fraction, "border": BORDER,
    }
    key = hashlib.sha256(json.dumps(key_params, sort_keys=True).encode()).hexdigest()[:24]
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    cache_path = cache_dir / f"patches-{key}.npz"

    if cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("train", "val", "mean", "std")}
                info = json.loads(str(z["info"]))
        except Exception as exc:  # unreadable entry: recompute and overwrite it
            warnings.warn(f"ignoring unreadable patch cache {cache_path}: {exc}")
        else:
            info.update(cache_path=str(cache_path), cache_hit=True)
            return PatchSet(*(torch.from_numpy(arrays[k]) for k in ("train", "val", "mean", "std")),
                            source=source_str, info=info)

    if kind == "embedded":
        images = embedded_images(EMBEDDED_TRAIN + EMBEDDED_VAL)
        train_names, val_names = list(EMBEDDED_TRAIN), list(EMBEDDED_VAL)
        do_whiten = True if whiten is None else bool(whiten)
    elif kind == "mat":
        images, already_whitened = load_images_mat(path)
        train_names, val_names = _split_names(images)
        do_whiten = (not already_whitened) if whiten is None else bool(whiten)
    else:
        images = load_image_folder(path)
        train_names, val_names = _split_names(images)
        do_whiten = True if whiten is None else bool(whiten)

    for name, im in images.items():
        if min(im.shape) < patch_size:
            raise ValueError(f"patch_size {patch_size} is larger than image {name!r} "
                             f"of shape {im.shape}")
    if do_whiten:
        images = {name: whiten_image(im, f0_fraction) for name, im in images.items()}

    rng_train, rng_val = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    train = extract_patches([images[n] for n in train_names], n_train, patch_size, rng_train)
    val = extract_patches([images[n] for n in val_names], n_val, patch_size, rng_val)
    train, val, mean, std = standardize(train, val)

    info = {
        "kind": kind, "train_images": train_names, "val_images": val_names,
        "whiten": do_whiten, "seed": seed, "patch_size": patch_size,
        "n_train": n_train, "n_val": n_val, "f0_fraction": f0_fraction,
        "border": BORDER,
        "variance": "unit per image (whiten_image)" if do_whiten else "as stored in the source",
    }
    arrays = {"train": train.astype(np.float32), "val": val.astype(np.float32),
              "mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    _atomic_savez(cache_path, info=np.array(json.dumps(info)), **arrays)
    info.update(cache_path=str(cache_path), cache_hit=False)
    return PatchSet(*(torch.from_numpy(arrays[k]) for k in ("train", "val", "mean", "std")),
                    source=source_str, info=info)
