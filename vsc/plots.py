"""Figures of Fallah & Rozell (ICML 2022): the dictionary (Figure 3 / 18), the pairwise
Jaccard histogram (Figure 5), and per-epoch metric curves of a training run; for the DNN
generators the estimated dictionary (Figures 6, 20-23), the point-biserial correlations
with the dictionary entries of the most correlated latents (Figure 8), reconstructions
(Figure 19) and the sweep panels of Figure 7.

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
           "load_jsonl", "plot_estimated_dictionary", "plot_point_biserial",
           "plot_reconstructions", "plot_figure7", "FIGURE8_CELEBA_ATTRIBUTES"]


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
    import textwrap

    cell = 0.35 if max(ph, pw) >= 8 else 0.2
    width = max(2.0, ncols * cell)
    # The title wrapped to the figure's width (about 14 characters per inch at 9 pt),
    # with a header tall enough for its lines.
    lines = textwrap.wrap(title, max(20, int(14 * width))) if title else []
    header = 0.2 + 0.18 * len(lines) if lines else 0.0
    height = max(2.0, nrows * cell) + header
    fig = _new_figure((width, height))
    ax = fig.add_axes((0, 0, 1, 1 - header / height))
    ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=-1.0, vmax=1.0,
              interpolation="nearest")
    ax.set_axis_off()
    if lines:
        fig.suptitle("\n".join(lines), fontsize=9)
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
    fig.tight_layout(rect=(0, 0, 1, 0.95))   # keep the suptitle above the panel titles
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



# ======================================================= DNN generators (section 4.2)

def _check_image_shape(image_shape) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape: expected (C, H, W), got {image_shape!r}") from None
    if c not in (1, 3) or h < 1 or w < 1:
        raise ValueError(f"image_shape: expected (C, H, W) with C = 1 or 3, got {image_shape!r}")
    return c, h, w


def _atom_tile(col: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A dictionary column as an (H, W, 3) picture in [0, 1]: reshaped (C, H, W) row-major,
    then scaled on its own from its minimum to its maximum (the public notebook's display);
    a constant column (e.g. a dead latent's zero atom) is uniform mid-gray."""
    c, h, w = shape
    img = col.reshape(c, h, w).transpose(1, 2, 0)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.full_like(img, 0.5)
    return np.repeat(img, 3, axis=2) if c == 1 else img


def _image_tile(img: np.ndarray) -> tuple[np.ndarray, bool]:
    """An image (C, H, W) in [0, 1] as (H, W, 3) clipped to [0, 1]; NaN pixels red.
    Returns the tile and whether any pixel was NaN."""
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img
    rgb = rgb.transpose(1, 2, 0)
    bad = np.isnan(rgb).any(axis=2)
    rgb = np.clip(np.nan_to_num(rgb, nan=0.0), 0.0, 1.0)
    rgb[bad] = (1.0, 0.0, 0.0)
    return rgb, bool(bad.any())


def plot_estimated_dictionary(A_est, path, image_shape, title: str | None = None,
                              rows: int = 8, cols: int = 8) -> np.ndarray:
    """Figures 6 and 20-23: entries (columns) of an estimated dictionary
    (:func:`vsc.metrics.estimated_dictionary`, (D, d)) as images of ``image_shape``
    (C, H, W), with ``D = C H W``.

    Entries are sorted by descending l2 norm; row r shows ``cols`` consecutive entries of
    that order starting at position ``floor(r d / rows)`` -- the top row holds the
    strongest entries, the following rows entries from further down the dictionary (the
    layout of the paper's appendix figures and its public notebook). When
    ``d <= rows * cols`` every entry is shown in order. Each tile is scaled from its own
    minimum to maximum (gray for 1 channel, RGB for 3) and captioned with its latent index.

    Returns the latent indices shown, in display order.
    """
    a = _to_numpy(A_est)
    if a.ndim != 2:
        raise ValueError(f"A_est: expected a 2-D (D, d) array, got shape {a.shape}")
    shape = _check_image_shape(image_shape)
    if a.shape[0] != int(np.prod(shape)):
        raise ValueError(f"image_shape: {tuple(shape)} has {int(np.prod(shape))} values, A_est "
                         f"has D = {a.shape[0]} rows")
    d = a.shape[1]
    if d < 1:
        raise ValueError("A_est: has no columns")
    for name, v in (("rows", rows), ("cols", cols)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: must be an int >= 1, got {v!r}")
    if not np.isfinite(a).all():
        raise ValueError("A_est: contains NaN or inf")
    order = np.argsort(-np.linalg.norm(a, axis=0), kind="stable")
    if d <= rows * cols:
        shown = [order[i * cols:(i + 1) * cols] for i in range(math.ceil(d / cols))]
    else:
        shown = [order[(r * d) // rows:(r * d) // rows + cols] for r in range(rows)]
    nrows, ncols = len(shown), max(len(r) for r in shown)
    cell = 1.1 if shape[1] >= 16 else 0.9
    fig = _new_figure((max(3.0, ncols * cell), nrows * (cell + 0.15) + 0.8))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, idx in enumerate(shown):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(idx):
                ax.imshow(_atom_tile(a[:, idx[c]], shape), interpolation="nearest")
                ax.set_title(f"z{idx[c]}", fontsize=6, pad=1)
    fig.suptitle(title or f"Estimated dictionary (least squares, section 4.2)\n{d} entries by "
                          f"descending norm, each scaled to its own range", fontsize=9)
    _save_png(fig, path)
    return np.concatenate(shown).astype(np.int64)


#: The attributes of the paper's Figure 8 (its public notebook's selection), in CelebA's
#: spelling.
FIGURE8_CELEBA_ATTRIBUTES = ("Bald", "Bangs", "Black_Hair", "Blond_Hair", "Eyeglasses", "Male",
                             "Pale_Skin", "Smiling")


def _check_names(names, count: int, what: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"attribute_names: expected a list of {count} names, got {names!r}")
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"attribute_names: {len(names)} names for the {count} {what}")
    return names


def plot_point_biserial(R, attribute_names, path, title: str | None = None, A_est=None,
                        image_shape=None, attributes: Sequence[str] | None = None,
                        max_latents: int = 64) -> list[dict]:
    """Figure 8: point-biserial correlations ``R`` (d, A) of latents with binary
    attributes (:func:`vsc.metrics.point_biserial`).

    Top: a heatmap, attributes x latents, of the signed correlation on a diverging scale
    [-1, 1]; latents sorted by their largest |rho| over the attributes, the first
    ``max_latents`` shown; undefined entries (NaN: constant latents or attributes) gray.
    Bottom, when ``A_est`` (D, d, :func:`vsc.metrics.estimated_dictionary`) and
    ``image_shape`` are given -- the paper's Figure 8 proper: for each selected attribute,
    the estimated dictionary entry of the latent with the largest |rho|, captioned with
    the latent and rho. ``attributes`` selects them (default: all when A <= 10, the
    paper's eight for CelebA's names, else the first 10).

    Returns ``[{"attribute", "latent", "rho"}, ...]`` for the selected attributes (latent
    None when every latent's correlation is undefined).
    """
    r = _to_numpy(R)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise ValueError(f"R: expected a non-empty 2-D (d, A) array, got shape {r.shape}")
    d, n_attr = r.shape
    names = _check_names(attribute_names, n_attr, "columns of R")
    if np.isinf(r).any() or (np.abs(np.nan_to_num(r)) > 1 + 1e-9).any():
        raise ValueError("R: correlations must lie in [-1, 1] (NaN allowed for undefined)")
    if isinstance(max_latents, bool) or not isinstance(max_latents, int) or max_latents < 1:
        raise ValueError(f"max_latents: must be an int >= 1, got {max_latents!r}")
    if attributes is None:
        if n_attr <= 10:
            attributes = names
        elif all(a in names for a in FIGURE8_CELEBA_ATTRIBUTES):
            attributes = list(FIGURE8_CELEBA_ATTRIBUTES)
        else:
            attributes = names[:10]
    attributes = list(attributes)
    for a in attributes:
        if a not in names:
            raise ValueError(f"attributes: {a!r} is not one of attribute_names")
    atoms = None
    if A_est is not None or image_shape is not None:
        if A_est is None or image_shape is None:
            raise ValueError("A_est, image_shape: give both to draw the dictionary entries")
        atoms = _to_numpy(A_est)
        shape = _check_image_shape(image_shape)
        if atoms.ndim != 2 or atoms.shape != (int(np.prod(shape)), d):
            raise ValueError(f"A_est: expected shape ({int(np.prod(shape))}, {d}) for "
                             f"image_shape {tuple(shape)} and d = {d} latents, got {atoms.shape}")
        if not np.isfinite(atoms).all():
            raise ValueError("A_est: contains NaN or inf")

    absr = np.where(np.isnan(r), -1.0, np.abs(r))
    top = []
    for a in attributes:
        col = absr[:, names.index(a)]
        i = int(np.argmax(col))
        top.append({"attribute": a, "latent": i if col[i] >= 0 else None,
                    "rho": float(r[i, names.index(a)]) if col[i] >= 0 else float("nan")})

    order = np.argsort(-absr.max(axis=1), kind="stable")[:max_latents]
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.75")
    n_sel = len(attributes)
    heat_h = max(2.0, 0.22 * n_attr + 1.0)
    atom_h = 1.6 if atoms is not None else 0.0
    fig = _new_figure((max(6.0, 0.12 * len(order) + 3.0, 1.1 * n_sel + 1.0), heat_h + atom_h + 0.8))
    grid = fig.add_gridspec(2 if atoms is not None else 1, 1,
                            height_ratios=[heat_h, atom_h] if atoms is not None else [1])
    ax = fig.add_subplot(grid[0])
    im = ax.imshow(np.ma.masked_invalid(r[order].T), cmap=cmap, vmin=-1.0, vmax=1.0,
                   aspect="auto", interpolation="nearest")
    ax.set_yticks(range(n_attr))
    ax.set_yticklabels(names, fontsize=6 if n_attr > 12 else 8)
    ax.set_xlabel(f"latent (the {len(order)} of {d} with the largest |rho|, in that order; "
                  f"gray: undefined)")
    if len(order) <= 40:
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([str(i) for i in order], fontsize=5, rotation=90)
    fig.colorbar(im, ax=ax, label="point-biserial correlation rho")
    if atoms is not None:
        sub = grid[1].subgridspec(1, n_sel)
        for k, t in enumerate(top):
            axk = fig.add_subplot(sub[k])
            axk.set_axis_off()
            label = t["attribute"].replace("_", " ")
            if t["latent"] is None:
                axk.set_title(f"{label}\n(undefined)", fontsize=6)
                continue
            axk.imshow(_atom_tile(atoms[:, t["latent"]], shape), interpolation="nearest")
            axk.set_title(f"{label}\nz{t['latent']} rho={t['rho']:+.2f}", fontsize=6)
    fig.suptitle(title or "Point-biserial correlation of latents with binary attributes"
                 + (" and the estimated dictionary entry of each attribute's most correlated "
                    "latent" if atoms is not None else ""), fontsize=9)
    _save_png(fig, path)
    return top


def plot_reconstructions(x, x_hat, path, title: str | None = None, max_images: int = 10,
                         row_labels: Sequence[str] | None = None) -> Path:
    """Figure 19: originals (top row) above their reconstructions.

    ``x`` is (N, C, H, W) in [0, 1]; ``x_hat`` either one tensor of the same shape or a
    dict ``{label: reconstructions}`` (one row each, as Figure 19 compares priors). The
    first ``max_images`` images are shown; values are clipped to [0, 1] for display and
    NaN pixels drawn red (and the row labeled so). Returns the path written.
    """
    xs = _to_numpy(x)
    if xs.ndim != 4 or xs.shape[1] not in (1, 3) or xs.shape[0] < 1:
        raise ValueError(f"x: expected (N, C, H, W) with C = 1 or 3 and N >= 1, got shape "
                         f"{xs.shape}")
    if isinstance(x_hat, Mapping):
        if not x_hat:
            raise ValueError("x_hat: the dict of reconstructions is empty")
        recs = {str(k): _to_numpy(v) for k, v in x_hat.items()}
    else:
        recs = {"reconstruction": _to_numpy(x_hat)}
    for label, v in recs.items():
        if v.shape != xs.shape:
            raise ValueError(f"x_hat: {label!r} has shape {v.shape}, x has {xs.shape}")
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"max_images: must be an int >= 1, got {max_images!r}")
    if row_labels is not None:
        row_labels = list(row_labels)
        if len(row_labels) != 1 + len(recs):
            raise ValueError(f"row_labels: expected {1 + len(recs)} labels (originals + "
                             f"{len(recs)} reconstruction rows), got {len(row_labels)}")
    else:
        row_labels = ["original"] + list(recs)
    n = min(max_images, xs.shape[0])
    rows = [xs] + list(recs.values())
    cell = 1.0
    fig = _new_figure((max(3.0, n * cell + 1.2), len(rows) * cell + 0.7))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, arr in enumerate(rows):
        any_nan = False
        for c in range(n):
            tile, has_nan = _image_tile(arr[c])
            any_nan |= has_nan
            axes[r][c].imshow(tile, interpolation="nearest", vmin=0.0, vmax=1.0)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(row_labels[r] + ("\n(NaN: red)" if any_nan else ""), fontsize=7)
    fig.suptitle(title or "Validation images (top) and reconstructions", fontsize=9)
    return _save_png(fig, path)


_FIGURE7_KEYS = ("prior", "latent_dim", "pct_nonzero_target", "val_mse", "fid", "fid_label",
                 "val_pct_nonzero")


def _finite(v) -> bool:
    return (not isinstance(v, bool) and isinstance(v, (int, float, np.floating, np.integer))
            and math.isfinite(float(v)))


def _mode(values):
    vals, counts = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    return float(vals[np.argmax(counts)])


def plot_figure7(records: Sequence[Mapping], path, title: str | None = None,
                 fixed_pct_nonzero: float | None = None,
                 fixed_latent_dim: int | None = None) -> Path:
    """Figure 7's panels from finished runs, one record each with the keys
    ``prior, latent_dim, pct_nonzero_target, val_mse, fid, fid_label, val_pct_nonzero``
    (``pct_nonzero_target`` None for a prior without a sparsity target, the Gaussian) and
    optionally ``multi_information`` (nats).

    Panels (mean over the runs of each point -- e.g. the seeds -- with +-1 std bars and
    the run count in the legend):

    (a) multi-information, (b) FID, (c) validation MSE per pixel, each against the latent
        dimension (log scale), sparse priors at the fixed target % non-zero
        (``fixed_pct_nonzero``; default 10, the paper's, when present, else the most
        common target) and priors without a target at any;
    (d) validation MSE against the target % non-zero at a fixed latent dimension
        (``fixed_latent_dim``; default: the dimension with the most distinct targets),
        sparse priors only;
    (e) not in the paper: the % non-zero reached on validation against the target, to
        check that the thresholds deliver the sparsity they were set for.

    The FID axis carries the records' ``fid_label`` (records with different labels are an
    error: their FIDs are not comparable). Values that are NaN or missing (a diverged
    run, a metric not recorded) are left out and counted in the panel. Returns the path.
    """
    if isinstance(records, Mapping) or not isinstance(records, Sequence) or not records:
        raise ValueError("records: expected a non-empty list of dicts (one per finished run)")
    recs = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"records: entry {i} is not a dict")
        missing = [k for k in _FIGURE7_KEYS if k not in rec]
        if missing:
            raise ValueError(f"records: entry {i} lacks {missing}")
        if not isinstance(rec["prior"], str) or not rec["prior"]:
            raise ValueError(f"records: entry {i} has prior {rec['prior']!r}, expected a name")
        if not _finite(rec["latent_dim"]) or int(rec["latent_dim"]) < 1:
            raise ValueError(f"records: entry {i} has latent_dim {rec['latent_dim']!r}")
        t = rec["pct_nonzero_target"]
        if t is not None and not (_finite(t) and 0 < float(t) <= 100):
            raise ValueError(f"records: entry {i} has pct_nonzero_target {t!r}, expected None "
                             f"or a number in (0, 100]")
        recs.append(rec)
    labels = sorted({str(r["fid_label"]) for r in recs if _finite(r["fid"])})
    if len(labels) > 1:
        raise ValueError(f"records: FIDs from different feature extractors cannot share a "
                         f"panel: {labels}")
    fid_label = labels[0] if labels else "FID"

    targets = [float(r["pct_nonzero_target"]) for r in recs if r["pct_nonzero_target"] is not None]
    if fixed_pct_nonzero is None:
        fixed_pct_nonzero = 10.0 if 10.0 in targets else (_mode(targets) if targets else None)
    if fixed_latent_dim is None and targets:
        dims = {}
        for r in recs:
            if r["pct_nonzero_target"] is not None:
                dims.setdefault(int(r["latent_dim"]), set()).add(float(r["pct_nonzero_target"]))
        fixed_latent_dim = max(sorted(dims), key=lambda k: len(dims[k]))

    priors = sorted({r["prior"] for r in recs}, key=lambda p: (p != "gaussian", p))
    import matplotlib

    colors = {p: matplotlib.colormaps["tab10"](k % 10) for k, p in enumerate(priors)}

    def series(select, x_key, y_key):
        """{prior: (xs, means, stds, counts)} and the number of runs left out."""
        out, dropped = {}, 0
        for p in priors:
            groups: dict[float, list[float]] = {}
            for r in recs:
                if r["prior"] != p or not select(r):
                    continue
                if not _finite(r.get(y_key)):
                    dropped += 1
                    continue
                groups.setdefault(float(r[x_key]), []).append(float(r[y_key]))
            if groups:
                xs = sorted(groups)
                out[p] = (xs, [np.mean(groups[x]) for x in xs], [np.std(groups[x]) for x in xs],
                          [len(groups[x]) for x in xs])
        return out, dropped

    def at_fixed_pct(r):
        t = r["pct_nonzero_target"]
        return t is None or (fixed_pct_nonzero is not None and float(t) == fixed_pct_nonzero)

    def at_fixed_dim(r):
        return r["pct_nonzero_target"] is not None and int(r["latent_dim"]) == fixed_latent_dim

    sparsity = f"{fixed_pct_nonzero:g}% non-zero" if fixed_pct_nonzero is not None else "-"
    panels = [
        ("(a) multi-information", at_fixed_pct, "latent_dim", "multi_information",
         "multi-information (nats)", "latent dimension", True),
        ("(b) FID", at_fixed_pct, "latent_dim", "fid", fid_label, "latent dimension", True),
        ("(c) validation MSE", at_fixed_pct, "latent_dim", "val_mse",
         "validation MSE per pixel", "latent dimension", True),
        (f"(d) validation MSE, latent dimension {fixed_latent_dim}", at_fixed_dim,
         "pct_nonzero_target", "val_mse", "validation MSE per pixel", "target % non-zero", False),
        ("(e) sparsity reached (not in the paper)", lambda r: r["pct_nonzero_target"] is not None,
         "pct_nonzero_target", "val_pct_nonzero", "validation % non-zero", "target % non-zero",
         False),
    ]
    fig = _new_figure((15.0, 8.0))
    axes = fig.subplots(2, 3).reshape(-1)
    for ax, (name, select, x_key, y_key, ylabel, xlabel, logx) in zip(axes, panels):
        data, dropped = series(select, x_key, y_key)
        for p, (xs, mean, std, counts) in data.items():
            runs = sum(counts)
            ax.errorbar(xs, mean, yerr=std, marker="o", markersize=4, capsize=3,
                        color=colors[p], label=f"{p} ({runs} run{'s' if runs != 1 else ''})")
        if y_key == "val_pct_nonzero" and data:
            lim = [0, max(max(v[0]) for v in data.values()) * 1.05]
            ax.plot(lim, lim, color="0.6", linestyle="--", linewidth=1, label="reached = target")
        if logx and data:
            ax.set_xscale("log", base=2)
            ticks = sorted({x for v in data.values() for x in v[0]})
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_title(name + (f" (sparse priors at {sparsity})" if select is at_fixed_pct else ""),
                     fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if len(ylabel) < 40 else "FID", fontsize=8)
        note = []
        if not data:
            note.append("no runs with this metric")
        if dropped:
            note.append(f"{dropped} run(s) without a finite value left out")
        if note:
            ax.text(0.5, 0.5, "\n".join(note), transform=ax.transAxes, ha="center",
                    va="center", fontsize=8, color="0.3")
        if data:
            ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    axes[-1].set_axis_off()
    import textwrap

    axes[-1].text(0.0, 0.9, "FID features:\n" + textwrap.fill(fid_label, 50),
                  transform=axes[-1].transAxes, fontsize=8, va="top")
    fig.suptitle(title or "Figure 7: priors compared across latent dimension and sparsity "
                          "(mean +- std over runs)")
    fig.tight_layout()
    return _save_png(fig, path)
