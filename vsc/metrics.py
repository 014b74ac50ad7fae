"""Evaluation metrics of section 4.1 and Appendix C of Fallah & Rozell (ICML 2022).

Every function takes torch tensors of any floating dtype on any device. Reductions are
computed in float64 (the evaluation sets of the paper are small: 16,000 patches of
dimension 256), so the results do not depend on the dtype the model ran in.

* :func:`sparse_coding_objective` -- objective (10), Table 1's "validation loss".
* :func:`percent_nonzero`         -- % of exactly non-zero code entries.
* :func:`multi_information`       -- sum_i h(z_i) - h(z) (Table 1), plug-in estimate in nats.
* :func:`iwae_bound`              -- the IWAE loss of Burda et al. (2016) (Table 1, K = 200).
* :func:`posterior_collapse`      -- eq. (15), Table 2.
* :func:`feature_collapse`        -- eq. (16), Table 2.
* :func:`snr_from_samples`, :func:`gradient_snr` -- gradient SNR of Rainforth et al.
  (2018), Figure 4.
* :func:`pairwise_jaccard`, :func:`active_atoms` -- support consistency, eq. (13),
  Figure 5.
* :func:`atom_shapes`, :func:`gabor_like_fraction` -- how many dictionary atoms are
  localized and oriented (the look of Figure 3), a number for what the eye judges;
  :func:`duplicate_atom_fraction` -- how many repeat another atom (Figure 18).

DNN generators (section 4.2):

* :func:`mse_per_pixel`        -- validation MSE per pixel (Figure 7).
* :func:`frechet_distance`     -- the Frechet distance between two feature sets (FID,
  Figure 7; feature extractors in :mod:`vsc.fid`).
* :func:`estimated_dictionary` -- the least-squares linear dictionary of section 4.2
  (Figures 6 and 8).
* :func:`point_biserial`       -- point-biserial correlation of latents with binary
  attributes (Figure 8).

Bad arguments raise :class:`ValueError` whose message starts with the argument's name.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

__all__ = [
    "sparse_coding_objective",
    "percent_nonzero",
    "discretize_codes",
    "multi_information",
    "iwae_bound",
    "posterior_collapse",
    "feature_collapse",
    "snr_from_samples",
    "gradient_snr",
    "active_atoms",
    "pairwise_jaccard",
    "atom_shapes",
    "gabor_like_fraction",
    "duplicate_atom_fraction",
    "mse_per_pixel",
    "frechet_distance",
    "estimated_dictionary",
    "point_biserial",
]


# ----------------------------------------------------------------------------- checks

def _check_tensor(name: str, t, ndim: int | None = None, floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    return t


def _check_nonneg(name: str, v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {v!r}") from None
    if not (v >= 0.0) or math.isinf(v):
        raise ValueError(f"{name}: must be finite and >= 0, got {v}")
    return v


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")


# ------------------------------------------------------------------ objective (10)

def sparse_coding_objective(x: torch.Tensor, A: torch.Tensor, z: torch.Tensor, lam: float,
                            kappa: float = 0.0, reduction: str = "mean"):
    """Sparse coding objective, eq. (10) of the paper, per data point::

        ||x^k - A z^k||_2^2 + lam * ||z^k||_1   (+ kappa * ||A||_F^2)

    Table 1's "validation loss" is this objective on the validation set with the
    FISTA weight ``lam = 20`` (and, being a loss over codes, ``kappa`` is usually 0 there).

    Args:
        x: data, shape (N, D).
        A: dictionary (linear generator), shape (D, d); column i is atom a_i.
        z: codes, shape (N, d).
        lam: weight of the l1 penalty, >= 0.
        kappa: weight of the Frobenius penalty on ``A``, >= 0. It is a property of the
            dictionary, not of a data point: it is added *once* to the mean, never per row.
        reduction: ``"mean"`` -> Python float, mean over rows plus ``kappa ||A||_F^2``;
            ``"none"`` -> float64 tensor (N,) of the per-row terms *without* the kappa term.
    """
    _check_tensor("x", x, 2)
    _check_tensor("A", A, 2)
    _check_tensor("z", z, 2)
    if x.shape[0] != z.shape[0]:
        raise ValueError(f"z: has {z.shape[0]} rows but x has {x.shape[0]}")
    if A.shape[0] != x.shape[1]:
        raise ValueError(f"A: has {A.shape[0]} rows but x has dimension {x.shape[1]}")
    if A.shape[1] != z.shape[1]:
        raise ValueError(f"A: has {A.shape[1]} columns but z has dimension {z.shape[1]}")
    lam = _check_nonneg("lam", lam)
    kappa = _check_nonneg("kappa", kappa)
    _check_reduction(reduction)
    if x.shape[0] == 0 and reduction == "mean":
        raise ValueError("x: no rows to average")
    x64, A64, z64 = x.double(), A.double(), z.double()
    resid = x64 - z64 @ A64.T
    per_row = resid.pow(2).sum(dim=1) + lam * z64.abs().sum(dim=1)
    if reduction == "none":
        return per_row
    return float(per_row.mean() + kappa * A64.pow(2).sum())


# ------------------------------------------------------------------- % non-zero

def percent_nonzero(z: torch.Tensor) -> float:
    """Percentage (0-100) of entries of ``z`` that are exactly non-zero (any shape).

    Exact, not thresholded: the thresholded priors produce exact zeros, whereas the
    Gaussian, Laplacian and Spike-and-Slab (Gumbel-softmax) samples almost never do.
    """
    _check_tensor("z", z, floating=False)
    if z.numel() == 0:
        raise ValueError("z: is empty")
    return 100.0 * float(torch.count_nonzero(z)) / z.numel()


# ------------------------------------------------------------ multi-information

def discretize_codes(z: torch.Tensor, bins: int = 32,
                     value_range: float | None = None) -> torch.Tensor:
    """Discretize codes for :func:`multi_information`; returns int64 (N, d) in [0, bins].

    Level 0 is reserved for *exact* zeros. Non-zero values fall into ``bins`` uniform bins
    over the symmetric interval [-r, r] (levels 1..bins, from -r upwards); values outside
    it are clipped into the outermost bins. ``r`` is ``value_range`` when given (one
    range shared by all coordinates, to compare models on the same grid), otherwise
    ``max |z_i|`` of each coordinate separately (which makes the estimate invariant to a
    positive rescaling of any coordinate, as the true multi-information is). A
    coordinate that is all zeros lands entirely in level 0.
    """
    _check_tensor("z", z, 2)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: must be an int >= 1, got {bins!r}")
    z64 = z.double()
    if not torch.isfinite(z64).all():
        raise ValueError("z: contains NaN or inf")
    if value_range is None:
        if z.shape[0] > 0:
            r = z64.abs().amax(dim=0, keepdim=True)
        else:
            r = torch.ones(1, z.shape[1], dtype=torch.float64, device=z.device)
    else:
        rv = _check_nonneg("value_range", value_range)
        if rv == 0.0:
            raise ValueError("value_range: must be > 0")
        r = torch.full((1, z.shape[1]), rv, dtype=torch.float64, device=z.device)
    r = torch.where(r > 0, r, torch.ones_like(r))  # all-zero coordinates: any r works
    idx = torch.floor((z64 + r) / (2.0 * r) * bins).clamp_(0, bins - 1).long() + 1
    return torch.where(z64 == 0, torch.zeros_like(idx), idx)


def _entropy_from_counts(counts: torch.Tensor, n: int, dim: int = -1) -> torch.Tensor:
    p = counts.double() / n
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(dim=dim)


def multi_information(z: torch.Tensor, bins: int = 32, value_range: float | None = None) -> float:
    """Multi-information ``sum_i h(z_i) - h(z)`` of codes z (N, d), in **nats** (Table 1).

    The paper measures statistical efficiency (redundancy) of inferred codes with this
    quantity (section 4.1.1, following Fallah et al. 2020, Eichhorn et al. 2009, Bethge
    2006) without saying how it is estimated. Here it is the plug-in estimate on
    discretized codes (see :func:`discretize_codes` for the binning: ``bins`` uniform bins
    over [-r, r] plus an exact-zero level of its own, so a sparse coordinate's
    zero/non-zero pattern is always resolved):

    * marginal entropies ``H(z_i)`` from the per-coordinate histograms,
    * joint entropy ``H(z)`` from the counts of identical discretized rows,
    * both with natural logarithms (divide by ``ln 2`` for bits).

    The result is the multi-information (total correlation) of the empirical joint
    distribution of the discretized codes, hence always >= 0, exactly 0 for d = 1, and
    ``(d - 1) H(z_1)`` for d identical coordinates.

    Bias: the plug-in joint entropy is at most ``log N`` (N distinct rows), so for
    high-dimensional codes (d = 256, N = 16,000 as in the paper) nearly every row is
    distinct, ``H(z) ~= log N``, and the estimate is close to ``sum_i H(z_i) - log N``:
    it then ranks codes mostly by their summed marginal entropies, and values are only
    comparable at the same N, ``bins`` and ``value_range``. For example, *independent*
    Laplacian codes with 10% non-zeros, d = 256, N = 16,000, ``bins=32`` read about
    135 nats (true value 0). Also independent coordinates
    read above 0 by about ``(L^d - 1 - d (L - 1)) / (2N)`` nats (Miller-Madow, L levels
    occupied per coordinate) while N is much larger than the occupied joint cells.
    """
    codes = discretize_codes(z, bins=bins, value_range=value_range)
    n, d = codes.shape
    if n == 0:
        raise ValueError("z: has no rows")
    levels = bins + 1
    counts = torch.zeros(d, levels, dtype=torch.float64, device=codes.device)
    ones = torch.ones(d, n, dtype=torch.float64, device=codes.device)
    counts.scatter_add_(1, codes.T.contiguous(), ones)
    h_marg = _entropy_from_counts(counts, n, dim=1).sum()
    _, row_counts = torch.unique(codes, dim=0, return_counts=True)
    h_joint = _entropy_from_counts(row_counts, n, dim=0)
    # The empirical multi-information is >= 0; only float rounding can take it below.
    return max(float(h_marg - h_joint), 0.0)


# ------------------------------------------------------------------------ IWAE

def iwae_bound(log_weights: torch.Tensor, reduction: str = "mean"):
    """IWAE loss of Burda et al. (2016), Table 1 (K = 200 importance samples)::

        -( logsumexp_k log w[n, k] - log K ),   log w[n, k] = log p(x_n, z_k) - log q(z_k | x_n)

    the negative of the K-sample importance-weighted lower bound on log p(x_n). By
    Jensen's inequality it is <= the negative ELBO estimate ``-mean_k log w[n, k]``, and
    for K = 1 it equals it.

    Args:
        log_weights: (N, K) log importance weights computed by the model, K >= 1.
        reduction: ``"mean"`` -> Python float averaged over n; ``"none"`` -> float64 (N,).
    """
    _check_tensor("log_weights", log_weights, 2)
    _check_reduction(reduction)
    n, k = log_weights.shape
    if k < 1:
        raise ValueError("log_weights: needs K >= 1 importance samples (dimension 1 is empty)")
    if n < 1 and reduction == "mean":
        raise ValueError("log_weights: has no rows to average")
    lw = log_weights.double()
    per_row = -(torch.logsumexp(lw, dim=1) - math.log(k))
    if reduction == "none":
        return per_row
    return float(per_row.mean())


# ------------------------------------------------------------ collapse (15), (16)

def _collapse_percent(name: str, values: torch.Tensor, eps: float, delta: float) -> float:
    _check_tensor(name, values, 2)
    eps = _check_nonneg("eps", eps)
    delta = _check_nonneg("delta", delta)
    if delta > 1.0:
        raise ValueError(f"delta: must be in [0, 1], got {delta}")
    n, d = values.shape
    if n == 0 or d == 0:
        raise ValueError(f"{name}: is empty, shape {tuple(values.shape)}")
    v = values.double()
    if torch.isnan(v).any():
        return float("nan")
    frac = (v <= eps).double().mean(dim=0)
    collapsed = frac >= (1.0 - delta) - 1e-12  # 1e-12: 19/20 must count as >= 1 - 0.05
    return 100.0 * float(collapsed.double().mean())


def posterior_collapse(kl: torch.Tensor, eps: float = 1e-2, delta: float = 5e-2) -> float:
    """% of latent dimensions with posterior collapse, eq. (15) (Lucas et al., 2019)::

        P_x[ KL(q_phi(z_i | x) || p(z_i)) <= eps ] >= 1 - delta

    Args:
        kl: (N, d) per-datapoint, per-dimension KL divergences.
        eps, delta: the paper's Table 2 uses eps = 1e-2, delta = 5e-2.

    Returns the percentage (0-100) of dimensions i that satisfy the condition, the
    probability being the fraction of the N data points. NaN anywhere in ``kl`` gives
    NaN (Table 2 reports runs that diverged as NaN).
    """
    return _collapse_percent("kl", kl, eps, delta)


def feature_collapse(z: torch.Tensor, eps: float = 1e-2, delta: float = 5e-2) -> float:
    """% of latent features that collapse to zero, eq. (16)::

        P_x[ |z_i| <= eps ] >= 1 - delta

    for inferred codes z (N, d); otherwise as :func:`posterior_collapse`.
    """
    _check_tensor("z", z, 2)
    return _collapse_percent("z", z.abs(), eps, delta)


# ------------------------------------------------------------------ gradient SNR

_ZERO_STD_MODES = ("clamp", "exclude")


def _snr_from_moments(mean: torch.Tensor, m2: torch.Tensor, s: int, std_eps: float,
                      zero_std: str) -> torch.Tensor:
    """Per-parameter |mean| / std (sample std, S - 1 denominator) from Welford moments.
    Identically-zero gradients -> NaN (excluded); zero std with non-zero mean -> clamped
    or NaN per ``zero_std``."""
    std = (m2.clamp_min(0.0) / (s - 1)).sqrt()
    snr = mean.abs() / std.clamp_min(std_eps)
    const = std == 0
    all_zero = const & (mean == 0)
    snr = torch.where(all_zero, torch.full_like(snr, float("nan")), snr)
    if zero_std == "exclude":
        snr = torch.where(const, torch.full_like(snr, float("nan")), snr)
    return snr


def _check_snr_args(std_eps, zero_std) -> float:
    std_eps = _check_nonneg("std_eps", std_eps)
    if std_eps == 0.0:
        raise ValueError("std_eps: must be > 0")
    if zero_std not in _ZERO_STD_MODES:
        raise ValueError(f"zero_std: expected one of {_ZERO_STD_MODES}, got {zero_std!r}")
    return std_eps


def _nanmean_float(snr: torch.Tensor) -> float:
    keep = ~torch.isnan(snr)
    if not bool(keep.any()):
        return float("nan")
    return float(snr[keep].mean())


def snr_from_samples(grads: torch.Tensor, std_eps: float = 1e-12, zero_std: str = "clamp",
                     reduction: str = "mean"):
    """Gradient signal-to-noise ratio of Rainforth et al. (2018), Figure 4::

        SNR(theta) = | E[grad_theta L] / sigma[grad_theta L] |

    per parameter, averaged over all parameters (as in the paper).

    Args:
        grads: (S, P) -- S >= 2 independent gradient samples of P parameters. The
            standard deviation is the sample one (denominator S - 1), in float64.
        std_eps: floor on the standard deviation (> 0).
        zero_std: what to do with a parameter whose gradient is the *same non-zero value*
            in every sample (std exactly 0, infinite SNR; e.g. a dictionary atom that no
            code uses, whose only gradient is the deterministic ``2 kappa a_i``):
            ``"clamp"`` -> ``|mean| / std_eps`` (huge: it dominates the average; inspect
            with ``reduction="none"``), ``"exclude"`` -> left out like zero gradients.
            Parameters whose gradient is identically zero (mean 0, std 0: SNR 0/0) are
            always left out.
        reduction: ``"mean"`` -> Python float, mean over the parameters kept (NaN when
            none is kept); ``"none"`` -> float64 (P,) with NaN for the parameters left out.
    """
    _check_tensor("grads", grads, 2)
    std_eps = _check_snr_args(std_eps, zero_std)
    _check_reduction(reduction)
    s, p = grads.shape
    if s < 2:
        raise ValueError(f"grads: needs S >= 2 gradient samples, got {s}")
    if p < 1:
        raise ValueError("grads: has no parameters (P = 0)")
    g = grads.double()
    mean = g.mean(dim=0)
    m2 = (g - mean).pow(2).sum(dim=0)
    snr = _snr_from_moments(mean, m2, s, std_eps, zero_std)
    return snr if reduction == "none" else _nanmean_float(snr)


def gradient_snr(loss_fn: Callable[[], torch.Tensor],
                 parameter_groups: Mapping[str, Sequence[torch.Tensor]],
                 num_samples: int, std_eps: float = 1e-12,
                 zero_std: str = "clamp") -> dict[str, float]:
    """Mean gradient SNR per parameter group (e.g. ``{"encoder": [...], "dictionary": [A]}``).

    Calls ``loss_fn()`` ``num_samples`` times -- each call must draw fresh noise (the
    paper uses 1000 code samples per validation point) and return a scalar loss -- takes
    the gradient of every group's parameters with :func:`torch.autograd.grad` (no
    ``.grad`` is touched; a parameter the loss does not reach gets zero gradient), and
    accumulates per-parameter mean and squared deviations with Welford's update in
    float64, so memory is O(P), not O(S x P). Then as :func:`snr_from_samples`.

    Returns ``{group: mean SNR over that group's parameters}``.
    """
    if not callable(loss_fn):
        raise ValueError("loss_fn: must be callable")
    if not isinstance(parameter_groups, Mapping) or len(parameter_groups) == 0:
        raise ValueError("parameter_groups: must be a non-empty dict of name -> list of tensors")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples: must be an int >= 2, got {num_samples!r}")
    std_eps = _check_snr_args(std_eps, zero_std)

    unique: list[torch.Tensor] = []
    pos: dict[int, int] = {}
    groups: dict[str, list[int]] = {}
    for name, params in parameter_groups.items():
        if isinstance(params, torch.Tensor):
            params = [params]
        params = list(params)
        if not params:
            raise ValueError(f"parameter_groups: group {name!r} is empty")
        idx = []
        for p in params:
            if not isinstance(p, torch.Tensor) or not p.requires_grad:
                raise ValueError(f"parameter_groups: group {name!r} holds a tensor that "
                                 "does not require grad")
            if id(p) not in pos:
                pos[id(p)] = len(unique)
                unique.append(p)
            idx.append(pos[id(p)])
        groups[name] = idx

    mean = [torch.zeros(p.numel(), dtype=torch.float64, device=p.device) for p in unique]
    m2 = [torch.zeros_like(m) for m in mean]
    for k in range(1, num_samples + 1):
        loss = loss_fn()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn: must return a scalar tensor")
        grads = torch.autograd.grad(loss.reshape(()), unique, allow_unused=True)
        for j, g in enumerate(grads):
            g = torch.zeros_like(mean[j]) if g is None else g.detach().reshape(-1).double()
            delta = g - mean[j]
            mean[j] += delta / k
            m2[j] += delta * (g - mean[j])

    out = {}
    for name, idx in groups.items():
        snr = torch.cat([_snr_from_moments(mean[j], m2[j], num_samples, std_eps, zero_std).cpu()
                         for j in idx])
        out[name] = _nanmean_float(snr)
    return out


# -------------------------------------------------------- support consistency (13)

def active_atoms(A: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Boolean mask (d,) of the atoms a_i (columns of A, shape (D, d)) with
    ``||a_i||_2^2 > threshold`` -- the paper measures support consistency only on these
    (section 4.1.3: ``||a_i||_2^2 > 1E-01``)."""
    _check_tensor("A", A, 2)
    threshold = _check_nonneg("threshold", threshold)
    return A.double().pow(2).sum(dim=0) > threshold


def pairwise_jaccard(codes: torch.Tensor, atom_mask: torch.Tensor | None = None,
                     empty_value: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """Average pairwise Jaccard index of supports over P forward passes, eq. (13), Figure 5::

        1 / (P (P - 1)) * sum_m sum_{n != m} |S(z^m) & S(z^n)| / |S(z^m) | S(z^n)|

    with S(z) = {i : z_i != 0} (exact zeros), restricted to ``atom_mask``.

    Args:
        codes: (N, P, d) -- P >= 2 sampled codes (the paper: 20 forward passes) for each
            of N inputs.
        atom_mask: optional bool (d,), e.g. :func:`active_atoms` of the dictionary;
            supports are intersected with it.
        empty_value: the value of C for two *empty* supports (0/0). Default 1.0: two
            empty supports are identical sets. (A pair with one empty support gives 0.)
        chunk_size: inputs processed at a time (bounds memory at chunk_size*P*d floats).

    Returns float64 (N,) in [0, 1] (when ``empty_value`` is in [0, 1]).
    """
    _check_tensor("codes", codes, 3, floating=False)
    n, p, d = codes.shape
    if p < 2:
        raise ValueError(f"codes: needs P >= 2 forward passes (dimension 1), got {p}")
    if atom_mask is not None:
        _check_tensor("atom_mask", atom_mask, 1, floating=False)
        if atom_mask.dtype != torch.bool:
            raise ValueError(f"atom_mask: must be a bool tensor, got {atom_mask.dtype}")
        if atom_mask.shape[0] != d:
            raise ValueError(f"atom_mask: has {atom_mask.shape[0]} entries, codes have d = {d}")
        atom_mask = atom_mask.to(codes.device)
    empty_value = float(empty_value)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: must be an int >= 1, got {chunk_size!r}")
    offdiag = ~torch.eye(p, dtype=torch.bool, device=codes.device)
    out = []
    for start in range(0, n, chunk_size):
        s = codes[start:start + chunk_size] != 0
        if atom_mask is not None:
            s = s & atom_mask
        sf = s.float()  # counts <= d are exact in float32 (d < 2**24)
        inter = torch.bmm(sf, sf.transpose(1, 2)).double()
        size = sf.sum(dim=2).double()
        union = size[:, :, None] + size[:, None, :] - inter
        c = torch.where(union > 0, inter / union.clamp_min(1.0),
                        torch.full_like(inter, empty_value))
        out.append((c * offdiag).sum(dim=(1, 2)) / (p * (p - 1)))
    if not out:
        return torch.zeros(0, dtype=torch.float64, device=codes.device)
    return torch.cat(out)


# ------------------------------------------------------- atom shapes (Figure 3)

def atom_shapes(A: torch.Tensor, patch_shape: tuple[int, int] = (16, 16),
                window: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per atom (columns of ``A``, shape ``(D, d)``, each a ``patch_shape`` patch) two
    numbers in [0, 1], float64 ``(d,)`` each:

    * **localization**: the largest fraction of the atom's energy ``sum a^2`` inside one
      ``window x window`` square of the patch (default: half the shorter side, a quarter
      of a 16x16 patch). White noise gives about 0.33 on 16x16 (the best of 81 windows
      of expected share 0.25); centred Gabors of width (sigma) 1.5 to 3 pixels 0.89 or
      more.
    * **orientation**: the coherence ``(l1 - l2) / (l1 + l2)`` of the eigenvalues of the
      structure tensor ``sum grad a grad a^T`` (central differences inside the patch):
      1 for a pattern that varies along one direction only (an edge, a grating), 0 for
      an isotropic one (white noise: about 0.1 on 16x16; a centred blob: 0).
    """
    _check_tensor("A", A, 2)
    h, w = patch_shape
    if A.shape[0] != h * w:
        raise ValueError(f"A: has {A.shape[0]} rows, patch_shape {patch_shape} needs {h * w}")
    window = min(h, w) // 2 if window is None else window
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= min(h, w):
        raise ValueError(f"window: must be an int in [1, {min(h, w)}], got {window!r}")
    atoms = A.detach().double().T.reshape(-1, 1, h, w)
    energy = atoms.square()
    total = energy.sum((1, 2, 3)).clamp_min(torch.finfo(torch.float64).tiny)
    boxes = torch.nn.functional.avg_pool2d(energy, window, stride=1) * window * window
    localization = boxes.flatten(1).max(1).values / total
    gx = atoms[..., 1:-1, 2:] - atoms[..., 1:-1, :-2]
    gy = atoms[..., 2:, 1:-1] - atoms[..., :-2, 1:-1]
    jxx, jyy, jxy = ((a * b).sum((1, 2, 3)) for a, b in ((gx, gx), (gy, gy), (gx, gy)))
    trace = (jxx + jyy).clamp_min(torch.finfo(torch.float64).tiny)
    orientation = torch.sqrt((jxx - jyy).square() + 4 * jxy.square()) / trace
    return localization, orientation


def gabor_like_fraction(A: torch.Tensor, patch_shape: tuple[int, int] = (16, 16),
                        min_localization: float = 0.5, min_orientation: float = 0.5) -> float:
    """Fraction of the atoms of ``A`` that are both localized and oriented
    (:func:`atom_shapes` above both thresholds): Gabor-like atoms and short edges
    count; noise, blobs and atoms spread over the whole patch do not. A coarse
    stand-in for looking at the dictionary (Figure 3), not a Gabor fit."""
    localization, orientation = atom_shapes(A, patch_shape)
    good = (localization > min_localization) & (orientation > min_orientation)
    return float(good.double().mean()) if good.numel() else float("nan")


def duplicate_atom_fraction(A: torch.Tensor, min_cosine: float = 0.8) -> float:
    """Fraction of the atoms (columns of ``A``) that have a near-duplicate: another atom
    with ``|cos| > min_cosine``. A dictionary of repeated features (Figure 18's average
    and IWAE sampling) scores near 1 even when every atom is localized and oriented;
    FISTA's, about 0.03. A zero atom has no direction and counts as no duplicate."""
    _check_tensor("A", A, 2)
    min_cosine = _check_nonneg("min_cosine", min_cosine)
    if A.shape[1] == 0:
        return float("nan")
    A = A.detach().double()
    norms = A.norm(dim=0)
    units = A / norms.clamp_min(torch.finfo(torch.float64).tiny)
    cosine = (units.T @ units).abs()
    cosine.fill_diagonal_(0.0)
    duplicated = (cosine > min_cosine).any(dim=1) & (norms > 0)
    return float(duplicated.double().mean())


# ================================================================ DNN generators (4.2)

def mse_per_pixel(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error per pixel (and channel) between images ``x`` and
    reconstructions ``x_hat`` of the same shape, e.g. (N, C, H, W): the mean over every
    element of ``(x - x_hat)^2``, in float64 -- Figure 7's validation MSE, and
    ``torch.nn.functional.mse_loss(x_hat, x)`` on the whole set. NaN anywhere gives NaN.
    (The paper's public notebooks sum the per-batch means over the validation batches
    instead of averaging them, so their plotted numbers are this value times the number
    of batches.)"""
    _check_tensor("x", x)
    _check_tensor("x_hat", x_hat)
    if x.shape != x_hat.shape:
        raise ValueError(f"x_hat: shape {tuple(x_hat.shape)} differs from x's {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError("x: is empty")
    return float((x.double() - x_hat.double().to(x.device)).pow(2).mean())


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (float64);
    eigenvalues below 0 (round-off) are set to 0."""
    evals, evecs = torch.linalg.eigh(c)
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al., 2017)::

        d^2 = ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))

    -- the FID when the features are Inception-v3 pool3 activations (:mod:`vsc.fid`).

    Args:
        a: (N, F) features, one row per sample, N >= 2.
        b: (M, F) features, M >= 2.

    Means and covariances are over samples (rows; covariance with denominator N - 1, as
    ``numpy.cov(a, rowvar=False)`` and pytorch-fid), computed in float64. The trace term
    is computed without a non-symmetric matrix square root:
    ``Tr (C_a C_b)^(1/2) = sum_i sqrt(lambda_i)`` where ``lambda_i`` are the eigenvalues
    of the symmetric PSD matrix ``C_a^(1/2) C_b C_a^(1/2)`` (similar to ``C_a C_b``), so
    no imaginary round-off arises; eigenvalues below 0 (round-off) count as 0. The result
    is clamped at 0 (it is a squared distance).

    Returns a Python float; NaN when any feature is NaN or inf (a diverged model's images
    must not get a plausible score).

    Note: the paper's published FIDs used ``numpy.cov`` on (samples, features) arrays
    without ``rowvar=False`` -- a covariance over *samples* -- so they are not comparable
    with this (standard) value.
    """
    _check_tensor("a", a, 2)
    _check_tensor("b", b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"b: has {b.shape[1]} features per row but a has {a.shape[1]}")
    if a.shape[1] < 1:
        raise ValueError("a: has no features (F = 0)")
    for name, t in (("a", a), ("b", b)):
        if t.shape[0] < 2:
            raise ValueError(f"{name}: needs at least 2 rows (samples) for a covariance, "
                             f"got {t.shape[0]}")
    a64, b64 = a.double(), b.double().to(a.device)
    if not (torch.isfinite(a64).all() and torch.isfinite(b64).all()):
        return float("nan")
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    ca = torch.cov(a64.T).reshape(a.shape[1], a.shape[1])
    cb = torch.cov(b64.T).reshape(b.shape[1], b.shape[1])
    sa = _psd_sqrt(ca)
    m = sa @ cb @ sa
    m = 0.5 * (m + m.T)
    tr_sqrt = torch.linalg.eigvalsh(m).clamp_min(0.0).sqrt().sum()
    d2 = (mu_a - mu_b).pow(2).sum() + torch.trace(ca) + torch.trace(cb) - 2.0 * tr_sqrt
    return max(float(d2), 0.0)


def estimated_dictionary(X: torch.Tensor, Z: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Least-squares linear dictionary from codes to images, section 4.2::

        X ~= A Z   (columns are samples)   ->   A_hat = (X Z^T) (Z Z^T)^(-1)

    (Isely et al., 2010; Fallah et al., 2020). Here samples are rows: ``X`` is (N, D)
    (images flattened, or (N, C, H, W), flattened row-major) and ``Z`` (N, d) the
    inferred codes of the same images; the result is (D, d), column i the image-space
    direction that latent i stands for (Figures 6, 8, 20-23). No intercept, as the paper.

    ``ridge = 0`` uses the Moore-Penrose pseudo-inverse of ``Z^T Z`` (as the paper's
    public notebook ``vsc_celeba_dict_est.ipynb``, ``C_sr @ pinv(C_rr)``: the 1/N of its
    two covariances cancels), so a latent that is zero on every sample -- common with
    sparse priors -- gets an exactly zero column instead of breaking the inverse (such
    latents are left out of the solve; the others get what the pseudo-inverse gives them,
    which it does anyway as their rows and columns of ``Z^T Z`` are zero); ``ridge > 0``
    solves ``A (Z^T Z + ridge I) = X^T Z``. Computed in float64; returns float64 (D, d).
    (The notebook estimates it on images resized to 32x32; pass whatever images you want
    the atoms to show.)
    """
    _check_tensor("Z", Z, 2)
    _check_tensor("X", X)
    if X.dim() < 2:
        raise ValueError(f"X: expected (N, D) or (N, C, H, W), got shape {tuple(X.shape)}")
    if X.shape[0] != Z.shape[0]:
        raise ValueError(f"Z: has {Z.shape[0]} rows but X has {X.shape[0]}")
    if Z.shape[0] < 1 or Z.shape[1] < 1:
        raise ValueError(f"Z: is empty, shape {tuple(Z.shape)}")
    ridge = _check_nonneg("ridge", ridge)
    x64 = X.reshape(X.shape[0], -1).double()
    z64 = Z.double().to(x64.device)
    if not (torch.isfinite(x64).all() and torch.isfinite(z64).all()):
        raise ValueError("X, Z: contain NaN or inf")
    # Latents that are zero on every sample get exactly zero columns (what the
    # pseudo-inverse gives them, without its round-off); the others are solved for.
    active = (z64 != 0).any(dim=0)
    out = torch.zeros(x64.shape[1], z64.shape[1], dtype=torch.float64, device=x64.device)
    if not bool(active.any()):
        return out
    za = z64[:, active]
    gram = za.T @ za                        # Z^T Z
    cross = za.T @ x64                      # Z^T X
    if ridge > 0:
        gram = gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        a_t = torch.linalg.solve(gram, cross)
    else:
        a_t = torch.linalg.pinv(gram, hermitian=True) @ cross
    out[:, active] = a_t.T
    return out


def point_biserial(Z: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Point-biserial correlation of every latent with every binary attribute (Figure 8)::

        rho[n, m] = (M1 - M0) / s_N * sqrt(n1 n0) / N

    with ``M1``, ``M0`` the means of latent n over the samples whose attribute m is 1 or 0,
    ``n1``, ``n0`` their counts and ``s_N`` the standard deviation of latent n over all N
    samples (denominator N) -- equal to the Pearson correlation of z_n with y_m and to
    ``scipy.stats.pointbiserialr``.

    Args:
        Z: (N, d) latent codes.
        Y: (N, A) attributes in {0, 1} (bool, int or float).

    Returns float64 (d, A). Undefined entries are NaN, never a number: a latent that is
    constant over the samples (e.g. always exactly 0, as dead latents of sparse priors)
    or an attribute that is constant (all 0 or all 1) has no correlation (scipy returns
    NaN too). Constancy is tested exactly (max == min), not on the rounded centered
    values. NaN in ``Z`` gives NaN in that latent's row.

    (The paper's public notebook takes M1 over the samples whose attribute is 0, so its
    values are the negatives of these; Figure 8 ranks latents by ``|rho|``, which is the
    same.)
    """
    _check_tensor("Z", Z, 2)
    _check_tensor("Y", Y, 2, floating=False)
    if Y.shape[0] != Z.shape[0]:
        raise ValueError(f"Y: has {Y.shape[0]} rows but Z has {Z.shape[0]}")
    if Z.shape[0] < 2:
        raise ValueError(f"Z: needs at least 2 rows (samples), got {Z.shape[0]}")
    y64 = Y.double().to(Z.device)
    if not bool(((y64 == 0) | (y64 == 1)).all()):
        raise ValueError("Y: attributes must be 0 or 1")
    z64 = Z.double()
    zc = z64 - z64.mean(0)
    yc = y64 - y64.mean(0)
    r = (zc.T @ yc) / (zc.pow(2).sum(0).sqrt()[:, None] * yc.pow(2).sum(0).sqrt()[None, :])
    r = r.clamp(-1.0, 1.0)
    z_const = z64.amax(0) == z64.amin(0)
    y_const = y64.amax(0) == y64.amin(0)
    undefined = z_const[:, None] | y_const[None, :] | torch.isnan(z64).any(0)[:, None]
    return torch.where(undefined, torch.full_like(r, float("nan")), r)
