"""Feature extractors for the FID of reconstructions (Figure 7 b, f).

:func:`fid` is :func:`vsc.metrics.frechet_distance` between the features of real and
reconstructed images. The features come from one of two extractors, and every output
carries the extractor's ``label`` so that nobody mistakes one for the other:

* **Inception** (``fid_weights=PATH``): the standard FID network -- Inception-v3 with the
  TensorFlow FID weights ported by pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``),
  pool3 features (2048). :class:`FIDInceptionV3` is written here in plain PyTorch with the
  same module names as that file's state dict (torchvision is not needed), and it applies
  the FID network's differences from torchvision's Inception (average pools that do not
  count padding, a max pool in the last block). Inputs are resized to 299x299 (bilinear),
  scaled to [-1, 1], gray images repeated to 3 channels, as pytorch-fid does. Nothing is
  downloaded: the user supplies the file. Its values are comparable with pytorch-fid's
  FIDs on the same images (not with the paper's published numbers, see
  :func:`vsc.metrics.frechet_distance`).
* **Offline default** (no file): a small CNN classifier trained on the data set's own
  training split -- its 10 classes for the digits and Fashion-MNIST, its 40 attributes
  (multi-label) for CelebA -- for a short fixed schedule, deterministic (fixed seed, its
  own generator; the caller's RNG state is untouched), cached on disk; the features are
  its 128 penultimate activations. Its FIDs rank models on the same data set; they are
  not Inception FIDs and not comparable with any published number, and the label says so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_write, cache_root
from .metrics import frechet_distance

__all__ = ["FeatureExtractor", "make_feature_extractor", "fid", "FIDInceptionV3",
           "InceptionExtractor", "ClassifierExtractor", "load_fid_inception",
           "train_fid_classifier", "default_cache_dir", "INCEPTION_LABEL"]

INCEPTION_LABEL = "FID (Inception-v3 pool3, pytorch-fid weights pt_inception-2015-12-05)"


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images (N, C, H, W) in [0, 1] to features (N, F)."""

    label: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def default_cache_dir() -> Path:
    """``$VSC_CACHE`` if set, else ``~/.cache/vsc`` (the classifiers go to its ``fid/``)."""
    return cache_root()


# =============================================================== the FID Inception-v3

class _Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: Inception's basic unit."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    # the TensorFlow graph averages over the valid pixels only at the borders
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # 35x35 blocks (Mixed_5b..5d)
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_3x3(x)),
        ], 1)


class _BlockB(nn.Module):  # 35 -> 17 reduction (Mixed_6a)
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class _BlockC(nn.Module):  # 17x17 blocks with factorized 7x7 convolutions (Mixed_6b..6e)
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool_3x3(x)),
        ], 1)


class _BlockD(nn.Module):  # 17 -> 8 reduction (Mixed_7a)
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                      self.branch7x7x3_4):
            b = layer(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b,
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _BlockE(nn.Module):  # 8x8 blocks with expanded filter banks (Mixed_7b, 7c)
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool  # the FID graph's Mixed_7c pools by max, Mixed_7b by average
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool
                  else _avg_pool_3x3(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the TensorFlow FID graph (Szegedy et al., 2016; Heusel et al.,
    2017), module names matching pytorch-fid's ``pt_inception-2015-12-05`` state dict
    (including its 1008-way ``fc``, unused for features). :meth:`forward` returns the
    2048 pool3 features of images (N, 3, H, W) in [0, 1]."""

    FEATURES = 2048

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_fid_inception(path: str | Path) -> FIDInceptionV3:
    """:class:`FIDInceptionV3` with the weights of pytorch-fid's file at ``path``
    (a state dict; ``num_batches_tracked`` entries optional). ValueError naming the file
    when it cannot be read, lacks a tensor, has one too many, or a shape differs."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"fid_weights: {path} does not exist (the Inception FID weights "
                         f"pt_inception-2015-12-05-6726825d.pth, from pytorch-fid's releases)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ValueError(f"fid_weights: {path} is not a readable PyTorch state dict ({exc})") \
            from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"fid_weights: {path} holds a {type(state).__name__}, not a state dict")
    model = FIDInceptionV3()
    expected = model.state_dict()
    state = {k: v for k, v in state.items()}
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = expected[k]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"fid_weights: {path} is not the FID Inception state dict: "
                         f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} "
                         f"unexpected (e.g. {unexpected[:3]})")
    for k, v in expected.items():
        if not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape:
            got = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k])
            raise ValueError(f"fid_weights: {path}: {k} has shape {got}, expected {tuple(v.shape)}")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


class InceptionExtractor:
    """Pool3 features of :class:`FIDInceptionV3` (float32 (N, 2048), on the CPU)."""

    def __init__(self, model: FIDInceptionV3, device="cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.label = INCEPTION_LABEL

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = _check_images(images).to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"images: the Inception network takes 1 or 3 channels, got "
                             f"{x.shape[1]}")
        return self.model(x).float().cpu()


# ========================================================== the offline classifier

#: Bump when the classifier, its schedule or its data change: cached weights then miss.
CLASSIFIER_VERSION = 1
CLASSIFIER_FEATURES = 128
CLASSIFIER_CHANNELS = (16, 32, 64)
#: The fixed schedule: Adam(lr) on batches of BATCH drawn from at most MAX_IMAGES training
#: images (evenly spaced), for min(EPOCHS passes, MAX_SAMPLES samples) -- whole batches.
CLASSIFIER_SCHEDULE = {"lr": 1e-3, "batch": 64, "epochs": 10, "max_samples": 40_000,
                       "max_images": 20_000, "seed": 0}


class SmallCNN(nn.Module):
    """3 conv layers (16, 32, 64 channels, 3x3, ReLU, two 2x2 max pools), average pool
    to 4x4, a 128-unit ReLU layer (the features) and a linear head. Small on purpose: on
    the embedded digits it trains in seconds on a CPU core."""

    def __init__(self, channels: int, outputs: int) -> None:
        super().__init__()
        c1, c2, c3 = CLASSIFIER_CHANNELS
        self.body = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(c3 * 16, CLASSIFIER_FEATURES), nn.ReLU())
        self.head = nn.Linear(CLASSIFIER_FEATURES, outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ClassifierExtractor:
    """Penultimate features of a :class:`SmallCNN` trained on a data set's training split
    (float32 (N, 128), on the CPU)."""

    def __init__(self, model: SmallCNN, label: str, info: dict, device="cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.label = label
        self.info = info

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = _check_images(images)
        shape = tuple(self.info["image_shape"])
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"images: shape {tuple(x.shape[1:])} per image, the classifier "
                             f"was trained on {shape}")
        return self.model.features(x.to(self.device, torch.float32)).float().cpu()


def _subset_indices(n: int) -> np.ndarray:
    m = min(n, CLASSIFIER_SCHEDULE["max_images"])
    return np.unique(np.floor(np.linspace(0, n - 1, m)).astype(np.int64))


def _dataset_fingerprint(ds) -> str:
    """A hash of what determines the classifier: the schedule and architecture, the data
    set's name, size, image shape, attribute names and values, and 64 of its images."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CLASSIFIER_VERSION, "schedule": CLASSIFIER_SCHEDULE,
                         "features": CLASSIFIER_FEATURES,
                         "channels": list(CLASSIFIER_CHANNELS), "name": ds.name, "n": len(ds),
                         "shape": list(ds.image_shape), "attributes": list(ds.attribute_names),
                         "multilabel": ds.class_names is None}, sort_keys=True).encode())
    h.update(ds.attributes().numpy().tobytes())
    probe = np.unique(np.floor(np.linspace(0, len(ds) - 1, min(64, len(ds)))).astype(np.int64))
    h.update(ds.images(probe.tolist()).numpy().tobytes())
    return h.hexdigest()[:16]


def _load_training_images(ds, indices: np.ndarray) -> torch.Tensor:
    """The subset's images, unflipped, float32 -- or uint8 when float32 would pass 512 MB
    (exact for uint8 sources such as CelebA's JPEGs)."""
    per = int(np.prod(ds.image_shape))
    as_uint8 = len(indices) * per * 4 > 512 * 2**20
    out = torch.empty((len(indices), *ds.image_shape),
                      dtype=torch.uint8 if as_uint8 else torch.float32)
    for start in range(0, len(indices), 1024):
        chunk = ds.images(indices[start:start + 1024].tolist())
        out[start:start + len(chunk)] = (chunk * 255).round_().to(torch.uint8) if as_uint8 else chunk
    return out


def train_fid_classifier(ds, device="cpu") -> tuple[SmallCNN, dict]:
    """Train :class:`SmallCNN` on ``ds`` (an :class:`~vsc.datasets.ImageDataset`,
    training split) with :data:`CLASSIFIER_SCHEDULE`: cross-entropy over the classes for
    single-label sets, binary cross-entropy over the attributes for multi-label ones.
    Deterministic for a given machine: fixed seed, its own generator, the global RNG
    state restored afterwards. Returns the model (CPU, eval) and an info dict."""
    sched = CLASSIFIER_SCHEDULE
    device = torch.device(device)
    idx = _subset_indices(len(ds))
    images = _load_training_images(ds, idx)
    attrs = ds.attributes()[torch.from_numpy(idx)]
    multilabel = ds.class_names is None
    targets = attrs if multilabel else attrs.argmax(1)
    outputs = attrs.shape[1]
    n = len(idx)
    steps = max(1, min(sched["epochs"] * n, sched["max_samples"]) // sched["batch"])
    gen = torch.Generator().manual_seed(sched["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sched["seed"])
        model = SmallCNN(ds.image_shape[0], outputs)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=sched["lr"])
    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + sched["batch"] > n:
            order, pos = torch.randperm(n, generator=gen), 0
        b = order[pos:pos + min(sched["batch"], n)]
        pos += len(b)
        x = images[b].to(device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        y = targets[b].to(device)
        logits = model(x)
        loss = (F.binary_cross_entropy_with_logits(logits, y) if multilabel
                else F.cross_entropy(logits, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    # accuracy on the training subset (a sanity check of the features, not a benchmark)
    correct = 0.0
    with torch.no_grad():
        for start in range(0, n, 1024):
            x = images[start:start + 1024].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            logits = model(x).cpu()
            y = targets[start:start + 1024]
            correct += float(((logits > 0).float() == y).float().mean(1).sum() if multilabel
                             else (logits.argmax(1) == y).float().sum())
    info = {"dataset": ds.name, "train_images": len(ds), "subset_images": n, "steps": steps,
            "train_accuracy": correct / n, "multilabel": multilabel,
            "image_shape": list(ds.image_shape), "outputs": outputs,
            "version": CLASSIFIER_VERSION}
    return model.cpu().eval(), info


def _classifier_label(info: dict) -> str:
    what = (f"{info['outputs']} attributes" if info["multilabel"]
            else f"{info['outputs']} classes")
    return (f"FID (offline: features of a small CNN trained on the {info['dataset']} training "
            f"split, {info['train_images']:,} images, {what}; not Inception, not comparable "
            f"with published FIDs)")


def make_feature_extractor(train_dataset, *, fid_weights: str | Path | None = None,
                           cache_dir: str | Path | None = None,
                           device="cpu") -> FeatureExtractor:
    """The feature extractor for :func:`fid` (module docstring).

    Args:
        train_dataset: the training split (:class:`~vsc.datasets.ImageDataset`) the
            offline classifier is trained on (ignored with ``fid_weights``).
        fid_weights: path of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``:
            use the standard Inception FID network.
        cache_dir: where the offline classifier is cached (default ``$VSC_CACHE`` or
            ``~/.cache/vsc``; file ``fid/classifier_<name>_<N>_<hash>.pt``, written
            atomically, keyed by :func:`_dataset_fingerprint`).
        device: where features are computed (and the classifier trained).
    """
    if fid_weights is not None:
        return InceptionExtractor(load_fid_inception(fid_weights), device=device)
    for attr in ("name", "image_shape", "attribute_names", "attributes", "images", "class_names"):
        if not hasattr(train_dataset, attr):
            raise ValueError(f"train_dataset: expected a vsc.datasets.ImageDataset, got "
                             f"{type(train_dataset).__name__}")
    if getattr(train_dataset, "split", "train") != "train":
        raise ValueError("train_dataset: the offline classifier trains on the training split, "
                         f"got the {train_dataset.split!r} split")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _dataset_fingerprint(train_dataset)
    path = root / "fid" / f"classifier_{train_dataset.name}_{len(train_dataset)}_{key}.pt"
    model = info = None
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            info = blob["info"]
            model = SmallCNN(train_dataset.image_shape[0], info["outputs"])
            model.load_state_dict(blob["state_dict"])
            info["cache"] = "hit"
        except Exception:  # a corrupt or foreign file: retrain and overwrite it
            model = info = None
    if model is None:
        model, info = train_fid_classifier(train_dataset, device=device)
        atomic_write(path, lambda f: torch.save({"state_dict": model.state_dict(), "info": info}, f))
        info = dict(info, cache="miss")
    info["cache_path"] = str(path)
    return ClassifierExtractor(model, _classifier_label(info), info, device=device)


# ================================================================== FID

def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a (N, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images: expected floating-point values in [0, 1], got {images.dtype}")
    return images


def _features(extractor, images, batch_size: int, name: str) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        batches = [images]
    elif hasattr(images, "__iter__") and not isinstance(images, (str, bytes)):
        batches = images
    else:
        raise ValueError(f"{name}: expected a (N, C, H, W) tensor or an iterable of them, got "
                         f"{type(images).__name__}")
    feats = []
    for batch in batches:
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            raise ValueError(f"{name}: expected a (N, C, H, W) tensor or an iterable of them")
        for start in range(0, batch.shape[0], batch_size):
            feats.append(extractor(batch[start:start + batch_size]).double())
    if not feats:
        raise ValueError(f"{name}: holds no images")
    return torch.cat(feats)


def fid(extractor: FeatureExtractor, real_images, fake_images, batch_size: int = 256) -> float:
    """Frechet distance (:func:`vsc.metrics.frechet_distance`) between the features of
    ``real_images`` and ``fake_images`` (each a (N, C, H, W) tensor in [0, 1] or an
    iterable of such batches, e.g. validation images and their reconstructions), computed
    ``batch_size`` images at a time. Report it with ``extractor.label``. NaN when any
    feature is not finite (e.g. NaN reconstructions)."""
    if not callable(extractor) or not isinstance(getattr(extractor, "label", None), str):
        raise ValueError("extractor: expected a FeatureExtractor (callable with a str label)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
    real = _features(extractor, real_images, batch_size, "real_images")
    fake = _features(extractor, fake_images, batch_size, "fake_images")
    return frechet_distance(real, fake)
