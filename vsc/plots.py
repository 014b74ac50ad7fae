"""Figures of Fallah & Rozell (ICML 2022): the dictionary (Figure 3 / 18), the pairwise
Jaccard histogram (Figure 5), and per-epoch metric curves of a training run.

matplotlib is imported lazily inside each function and used without pyplot: every
figure is a :class:`matplotlib.figure.Figure` drawn on an explicit Agg canvas, so no
display, no global backend switch and no figure left open. Each PNG is written
atomically (a temporary file in the target folder, then :func:`os.replace`), so a reader
never sees a half-written file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ._io import atomic_write

__all__ = ["plot_dictionary", "plot_dictionaries", "plot_jaccard_histogram", "plot_metric_curves",
           "load_jsonl"]


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _to_numpy(a) -> np.ndarray:
    try:
        import torch

        if isinstance(a, torch.Tensor):
            return a.detach().to("cpu", dtype=torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(a, dtype=np.float64)


def plot_dictionary(A, path, patch_shape: tuple[int, int] = (16, 16), sort_by_norm: bool = True,
                    ncols: int = 16, title: str | None = None) -> np.ndarray:
    """Figure 3: the atoms (columns) of a dictionary A (D, d) as image patches.

    Each column is reshaped row-major (C order) to ``patch_shape`` and scaled on its own,
    symmetrically around 0: ``a_i / max|a_i|`` shown on a gray map over [-1, 1], so 0 is
    mid-gray for every atom (an all-zero atom is uniformly gray). With ``sort_by_norm``
    atoms are laid out by descending l2 norm (ties keep their index order), as in
    Figure 18, row by row in ``ncols`` columns.

    Returns the order used: int array (d,) of atom indices, first shown first.
    """
    mosaic, order, (ncols, nrows, ph, pw) = _dictionary_mosaic(A, patch_shape, sort_by_norm, ncols)
    import matplotlib

    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    cell = 0.35 if max(ph, pw) >= 8 else 0.2
    fig = _new_figure((max(2.0, ncols * cell), max(2.0, nrows * cell) + (0.4 if title else 0)))
    ax = fig.add_axes((0, 0, 1, 0.93 if title else 1))
    ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=-1.0, vmax=1.0,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    _save_png(fig, path)
    return order.astype(np.int64)


def plot_dictionaries(panels: Sequence[tuple[str, object]], path,
                      patch_shape: tuple[int, int] | None = None, ncols: int = 16) -> Path:
    """Several dictionaries side by side (Figure 18), each as :func:`plot_dictionary`
    draws it (atoms sorted by norm), titled by its label. ``panels``: ``(label, A)``
    pairs; ``patch_shape`` defaults to square patches. Returns the path written."""
    if not panels:
        raise ValueError("panels: is empty")
    import matplotlib

    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    mosaics = []
    for label, A in panels:
        a = _to_numpy(A)
        side = int(round(math.sqrt(a.shape[0]))) if a.ndim == 2 else 0
        shape = patch_shape or (side, side)
        mosaics.append((str(label), _dictionary_mosaic(a, shape, True, ncols)[0]))
    n = len(mosaics)
    fig = _new_figure((4.2 * n, 4.9))
    for i, (label, mosaic) in enumerate(mosaics):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=-1.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    fig.suptitle("Dictionaries, atoms sorted by norm (each scaled to its own max |value|)",
                 fontsize=9)
    fig.tight_layout()
    return _save_png(fig, path)


def _dictionary_mosaic(A, patch_shape, sort_by_norm, ncols):
    """The atoms of ``A (D, d)`` tiled row by row: ``(mosaic, order, (ncols, nrows, ph, pw))``."""
    a = _to_numpy(A)
    if a.ndim != 2:
        raise ValueError(f"A: expected a 2-D (D, d) array, got shape {a.shape}")
    if (len(patch_shape) != 2 or any(int(s) < 1 for s in patch_shape)):
        raise ValueError(f"patch_shape: expected two positive ints, got {patch_shape!r}")
    ph, pw = int(patch_shape[0]), int(patch_shape[1])
    dim, d = a.shape
    if dim != ph * pw:
        raise ValueError(f"patch_shape: {patch_shape} has {ph * pw} pixels, A has D = {dim} rows")
    if d < 1:
        raise ValueError("A: has no columns")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols: must be an int >= 1, got {ncols!r}")
    if not np.isfinite(a).all():
        raise ValueError("A: contains NaN or inf")

    norms = np.linalg.norm(a, axis=0)
    order = np.argsort(-norms, kind="stable") if sort_by_norm else np.arange(d)
    ncols = min(ncols, d)
    nrows = math.ceil(d / ncols)
    pad = 1
    mosaic = np.full((nrows * (ph + pad) + pad, ncols * (pw + pad) + pad), np.nan)
    for slot, i in enumerate(order):
        col = a[:, i]
        scale = np.abs(col).max()
        img = (col / scale if scale > 0 else col).reshape(ph, pw)
        r, c = divmod(slot, ncols)
        y, x = pad + r * (ph + pad), pad + c * (pw + pad)
        mosaic[y:y + ph, x:x + pw] = img
    return mosaic, order, (ncols, nrows, ph, pw)


def plot_jaccard_histogram(values_by_label: Mapping[str, object], path, bins: int = 20,
                           title: str = "Average pairwise Jaccard index") -> Path:
    """Figure 5: overlaid histograms over [0, 1] of per-input average pairwise Jaccard
    indices (:func:`vsc.metrics.pairwise_jaccard`), one per label (e.g. "max ELBO",
    "average"); bar heights are densities so runs of different sizes compare. NaNs are
    dropped. Returns the path written."""
    if not isinstance(values_by_label, Mapping) or not values_by_label:
        raise ValueError("values_by_label: must be a non-empty dict of label -> values")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: must be an int >= 1, got {bins!r}")
    data = {}
    for label, v in values_by_label.items():
        arr = _to_numpy(v).reshape(-1)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            raise ValueError(f"values_by_label: {label!r} has no (non-NaN) values")
        data[str(label)] = arr
    fig = _new_figure((5.0, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for label, arr in data.items():
        ax.hist(np.clip(arr, 0.0, 1.0), bins=edges, density=True, alpha=0.5,
                label=f"{label} (mean {arr.mean():.3f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("average pairwise Jaccard index")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save_png(fig, path)


def load_jsonl(path) -> list[dict]:
    """Read a metrics JSON-lines file (one JSON object a line; blank lines skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"path: line {lineno} of {path} is not a JSON object")
            records.append(rec)
    return records


def plot_metric_curves(records: Sequence[Mapping], keys: str | Iterable[str], path,
                       x_key: str = "epoch", logy: bool = False, title: str | None = None,
                       labels: Mapping[str, str] | None = None) -> Path:
    """Per-epoch curves (e.g. validation loss, % non-zero) from metrics records.

    ``records`` are the dicts of the metrics JSON lines (see :func:`load_jsonl`); one
    subplot per key, x from ``record[x_key]`` (the record's position when absent).
    Records without a key, or whose value is not a finite number, are skipped for that
    key. A key present in no record raises ValueError. ``labels`` maps a key to its
    y-axis label (with units; default the key), ``title`` heads the figure. Returns
    the path written.
    """
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    if not keys:
        raise ValueError("keys: is empty")
    if not isinstance(records, Sequence) or not records:
        raise ValueError("records: must be a non-empty list of dicts")
    series = {}
    for key in keys:
        xs, ys = [], []
        for pos, rec in enumerate(records):
            if not isinstance(rec, Mapping):
                raise ValueError(f"records: entry {pos} is not a dict")
            v = rec.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            xs.append(rec.get(x_key, pos))
            ys.append(float(v))
        if not ys:
            raise ValueError(f"keys: {key!r} has no numeric value in any record")
        series[key] = (xs, ys)
    n = len(keys)
    labels = dict(labels or {})
    fig = _new_figure((5.5, 2.4 * n + (0.4 if title else 0.0)))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(n, 1, i + 1)
        xs, ys = series[key]
        ax.plot(xs, ys, marker="o" if len(ys) < 30 else None, markersize=3)
        ax.set_ylabel(labels.get(key, key), fontsize=8)
        if logy and all(y > 0 for y in ys):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.axes[-1].set_xlabel(x_key)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save_png(fig, path)
