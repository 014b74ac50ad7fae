"""Known-answer tests for vsc.metrics and smoke/ordering tests for vsc.plots."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from vsc import metrics as M
from vsc import plots as P

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ objective (10)

def test_objective_hand_case_and_kappa_added_once():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    A = torch.eye(2)
    z = torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, -1.0]])
    lam = 0.5
    # rows: ||(0,2)||^2 + 0.5*1 = 4.5;  0;  0 + 0.5*4 = 2
    rows = M.sparse_coding_objective(x, A, z, lam, reduction="none")
    assert torch.allclose(rows, torch.tensor([4.5, 0.0, 2.0], dtype=torch.float64))
    assert M.sparse_coding_objective(x, A, z, lam) == pytest.approx(6.5 / 3)
    # ||I||_F^2 = 2, added once to the mean -- not once per row
    assert M.sparse_coding_objective(x, A, z, lam, kappa=0.1) == pytest.approx(6.5 / 3 + 0.2)
    assert torch.equal(M.sparse_coding_objective(x, A, z, lam, kappa=0.1, reduction="none"), rows)


def test_objective_matches_numpy_and_dtypes():
    g = torch.Generator().manual_seed(0)
    x, A, z = (torch.randn(7, 5, generator=g), torch.randn(5, 4, generator=g),
               torch.randn(7, 4, generator=g))
    xn, An, zn = x.double().numpy(), A.double().numpy(), z.double().numpy()
    ref = ((xn - zn @ An.T) ** 2).sum(1) + 20.0 * np.abs(zn).sum(1)
    out = M.sparse_coding_objective(x, A, z, lam=20.0, reduction="none")
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    val = M.sparse_coding_objective(x.half(), A.half(), z.half(), lam=20.0)
    assert isinstance(val, float)
    assert val == pytest.approx(ref.mean(), rel=1e-2)


@pytest.mark.parametrize("kwargs, name", [
    (dict(x=torch.zeros(3, 5)), "A"),               # D mismatch
    (dict(z=torch.zeros(2, 4)), "z"),               # N mismatch
    (dict(A=torch.zeros(4, 3)), "A"),               # d mismatch
    (dict(x=torch.zeros(3)), "x"),                  # not 2-D
    (dict(lam=-1.0), "lam"),
    (dict(kappa=-1e-3), "kappa"),
    (dict(reduction="sum"), "reduction"),
])
def test_objective_bad_inputs(kwargs, name):
    args = dict(x=torch.zeros(3, 4), A=torch.zeros(4, 4), z=torch.zeros(3, 4), lam=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}"):
        M.sparse_coding_objective(**args)


# ------------------------------------------------------------------- % non-zero

def test_percent_nonzero():
    z = torch.tensor([[0.0, 1.0, -0.0, 1e-30, 0.0]])
    assert M.percent_nonzero(z) == pytest.approx(40.0)
    assert M.percent_nonzero(torch.ones(2, 3, 4)) == 100.0
    with pytest.raises(ValueError, match="^z"):
        M.percent_nonzero(torch.zeros(0, 3))


# ------------------------------------------------------------ multi-information

def _plugin_mi_numpy(codes: np.ndarray) -> float:
    """Independent reference: KL(empirical joint || product of empirical marginals)."""
    n, d = codes.shape
    rows, counts = np.unique(codes, axis=0, return_counts=True)
    marg = [dict(zip(*np.unique(codes[:, i], return_counts=True))) for i in range(d)]
    mi = 0.0
    for row, c in zip(rows, counts):
        p = c / n
        q = np.prod([marg[i][row[i]] / n for i in range(d)])
        mi += p * math.log(p / q)
    return mi


def _sparse_laplace(n, d, g, p_zero=0.6):
    z = torch.distributions.Laplace(0.0, 1.0).sample((n, d))
    z[torch.rand(n, d, generator=g) < p_zero] = 0.0
    return z


def test_multi_information_single_coordinate_is_zero():
    torch.manual_seed(1)
    z = _sparse_laplace(500, 1, torch.Generator().manual_seed(1))
    assert M.multi_information(z, bins=16) == 0.0


def test_multi_information_identical_copies():
    # three levels {-1, 0, 1} with equal counts: H = ln 3; 3 copies -> 2 ln 3
    v = torch.tensor([-1.0, 0.0, 1.0]).repeat(100)[:, None]
    mi = M.multi_information(v.repeat(1, 3), bins=4)
    assert mi == pytest.approx(2 * math.log(3), rel=1e-12)
    # a continuous sparse variable: (d - 1) * plug-in H(marginal), marginal from numpy
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    v = _sparse_laplace(2000, 1, g)
    col = M.discretize_codes(v, bins=16).numpy()[:, 0]
    _, c = np.unique(col, return_counts=True)
    h = -(c / c.sum() * np.log(c / c.sum())).sum()
    assert h > 1.0
    assert M.multi_information(v.repeat(1, 4), bins=16) == pytest.approx(3 * h, rel=1e-10)


def test_multi_information_independent_near_zero_dependent_not():
    g = torch.Generator().manual_seed(3)
    n = 200_000
    u = torch.rand(n, 2, generator=g) * 2 - 1
    keep = torch.rand(n, 2, generator=g) < 0.5
    z = torch.where(keep, u, torch.zeros_like(u))
    mi = M.multi_information(z, bins=4)
    assert 0.0 <= mi < 1e-3  # Miller-Madow bias ~ (25 - 1 - 8) / (2n) = 4e-5
    dep = torch.stack([z[:, 0], z[:, 0] + 0.05 * z[:, 1]], dim=1)
    assert M.multi_information(dep, bins=4) > 0.5


def test_multi_information_matches_numpy_reference_and_nonnegative():
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    base = _sparse_laplace(3000, 1, g)
    z = torch.cat([base, base * 0.7 + _sparse_laplace(3000, 1, g), _sparse_laplace(3000, 1, g)], 1)
    for bins, vr in [(3, None), (6, 2.0)]:
        ref = _plugin_mi_numpy(M.discretize_codes(z, bins=bins, value_range=vr).numpy())
        got = M.multi_information(z, bins=bins, value_range=vr)
        assert ref > 0.01
        assert got >= 0.0
        assert got == pytest.approx(ref, rel=1e-9)


def test_multi_information_zero_has_its_own_bin():
    g = torch.Generator().manual_seed(5)
    on = torch.rand(1000, generator=g) < 0.5
    v = torch.where(on, torch.full((1000,), 1e-9), torch.zeros(1000))[:, None]
    codes = M.discretize_codes(v, bins=2, value_range=1.0)
    assert torch.equal(codes[:, 0] == 0, ~on)
    p = on.double().mean().item()
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    # 0 and 1e-9 would share a bin of [-1, 1] without the exact-zero level
    assert M.multi_information(v.repeat(1, 2), bins=2, value_range=1.0) == pytest.approx(h)


def test_multi_information_per_coordinate_range_is_scale_invariant():
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    base = _sparse_laplace(2000, 1, g)
    z = torch.cat([base, base + 0.3 * _sparse_laplace(2000, 1, g)], 1)
    scaled = z * torch.tensor([1.0, 100.0])
    assert M.multi_information(scaled, bins=8) == pytest.approx(M.multi_information(z, bins=8))
    # with one shared range the large coordinate swamps the grid: a different answer
    assert M.multi_information(scaled, bins=8, value_range=float(scaled.abs().max())) != \
        pytest.approx(M.multi_information(z, bins=8))


@pytest.mark.parametrize("kwargs, name", [
    (dict(bins=0), "bins"), (dict(bins=2.5), "bins"), (dict(value_range=-1.0), "value_range"),
    (dict(value_range=0.0), "value_range"), (dict(z=torch.zeros(10)), "z"),
    (dict(z=torch.tensor([[float("nan")]])), "z"), (dict(z=torch.zeros(0, 3)), "z"),
])
def test_multi_information_bad_inputs(kwargs, name):
    args = dict(z=torch.randn(10, 3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}"):
        M.multi_information(**args)


# ------------------------------------------------------------------------ IWAE

def test_iwae_constant_weights_and_k1():
    lw = torch.full((4, 200), -3.25)
    assert M.iwae_bound(lw) == pytest.approx(3.25, abs=1e-12)
    lw1 = torch.tensor([[0.5], [-2.0]])
    expected = torch.tensor([-0.5, 2.0], dtype=torch.float64)
    assert torch.allclose(M.iwae_bound(lw1, reduction="none"), expected)


def test_iwae_matches_numpy_and_jensen():
    g = torch.Generator().manual_seed(7)
    lw = torch.randn(6, 50, generator=g, dtype=torch.float64) * 2 - 5
    ref = -np.log(np.exp(lw.numpy()).mean(axis=1))
    per_row = M.iwae_bound(lw, reduction="none")
    np.testing.assert_allclose(per_row.numpy(), ref, rtol=1e-12)
    assert M.iwae_bound(lw) == pytest.approx(ref.mean(), rel=1e-12)
    elbo_loss = -lw.mean(dim=1)
    assert bool((per_row < elbo_loss - 1e-3).all())  # strict: the weights vary
    # large magnitudes stay finite (logsumexp), float32 input
    big = (lw - 1e4).float()
    assert math.isfinite(M.iwae_bound(big))
    assert M.iwae_bound(big) == pytest.approx(ref.mean() + 1e4, rel=1e-6)


@pytest.mark.parametrize("lw, kwargs, name", [
    (torch.zeros(3, 0), {}, "log_weights"),
    (torch.zeros(3), {}, "log_weights"),
    (torch.zeros(3, 2, dtype=torch.long), {}, "log_weights"),
    (torch.zeros(3, 2), dict(reduction="sum"), "reduction"),
])
def test_iwae_bad_inputs(lw, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        M.iwae_bound(lw, **kwargs)


# ------------------------------------------------------------ collapse (15), (16)

def _collapse_case():
    kl = torch.zeros(20, 4)
    kl[0, 1] = 1.0            # 19/20 = 0.95 <= eps: collapsed at delta = 0.05
    kl[:2, 2] = 1.0           # 18/20 = 0.90: not collapsed
    kl[:, 3] = 0.5            # never
    kl[5:, 0] = 1e-2          # == eps counts as <= eps
    return kl


def test_posterior_collapse_hand_case():
    kl = _collapse_case()
    assert M.posterior_collapse(kl) == pytest.approx(50.0)
    assert M.posterior_collapse(kl, delta=0.0) == pytest.approx(25.0)
    assert M.posterior_collapse(kl, delta=0.1) == pytest.approx(75.0)
    assert M.posterior_collapse(kl, eps=0.5) == pytest.approx(75.0)    # dim 2 still 18/20
    assert M.posterior_collapse(kl, eps=1.0) == pytest.approx(100.0)
    assert M.posterior_collapse(kl, eps=0.0) == pytest.approx(25.0)  # only dim 1 (dim 0 has 1e-2)
    kl[3, 3] = float("nan")
    assert math.isnan(M.posterior_collapse(kl))


def test_feature_collapse_uses_absolute_value():
    z = torch.zeros(20, 3)
    z[:, 0] = -0.005          # |z| <= eps: collapsed
    z[:, 1] = -0.5            # not collapsed, though z <= eps
    z[0, 2] = 3.0             # 19/20 zeros: collapsed
    assert M.feature_collapse(z) == pytest.approx(200.0 / 3)


@pytest.mark.parametrize("fn", [M.posterior_collapse, M.feature_collapse])
@pytest.mark.parametrize("kwargs, name", [
    (dict(eps=-1e-2), "eps"), (dict(delta=-0.1), "delta"), (dict(delta=1.5), "delta"),
])
def test_collapse_bad_inputs(fn, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        fn(torch.zeros(5, 2), **kwargs)


def test_collapse_bad_shapes():
    with pytest.raises(ValueError, match="^kl"):
        M.posterior_collapse(torch.zeros(5))
    with pytest.raises(ValueError, match="^z"):
        M.feature_collapse(torch.zeros(5, 2, 2))


# ------------------------------------------------------------------ gradient SNR

def test_snr_from_samples_hand_case():
    grads = torch.tensor([[1.0, 0.0, -1.0], [3.0, 0.0, 1.0]])
    # col 0: mean 2, sample std sqrt(2); col 1 identically zero -> excluded; col 2: SNR 0
    per = M.snr_from_samples(grads, reduction="none")
    assert per[0].item() == pytest.approx(math.sqrt(2))
    assert math.isnan(per[1].item())
    assert per[2].item() == 0.0
    assert M.snr_from_samples(grads) == pytest.approx(math.sqrt(2) / 2)
    assert math.isnan(M.snr_from_samples(torch.zeros(4, 3)))


def test_snr_from_samples_constant_gradient():
    grads = torch.tensor([[2.0, 1.0], [2.0, 3.0], [2.0, 5.0]])
    per = M.snr_from_samples(grads, std_eps=1e-6, reduction="none")
    assert per[0].item() == pytest.approx(2e6)
    assert per[1].item() == pytest.approx(1.5)
    assert M.snr_from_samples(grads, zero_std="exclude") == pytest.approx(1.5)


def test_snr_from_samples_matches_numpy():
    g = torch.Generator().manual_seed(8)
    grads = torch.randn(30, 11, generator=g) + torch.linspace(-2, 2, 11)
    gn = grads.double().numpy()
    ref = np.mean(np.abs(gn.mean(0)) / gn.std(0, ddof=1))
    assert M.snr_from_samples(grads) == pytest.approx(ref, rel=1e-10)


def test_gradient_snr_matches_stored_samples_and_groups():
    g = torch.Generator().manual_seed(9)
    w1 = torch.randn(3, requires_grad=True)
    w2 = torch.randn(2, 2, requires_grad=True)
    unused = torch.randn(4, requires_grad=True)
    mu1, mu2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([[3.0, 0.0], [-1.0, 1.0]])
    seen1, seen2 = [], []

    def loss_fn():
        n1 = mu1 + torch.randn(3, generator=g)
        n2 = mu2 + 0.5 * torch.randn(2, 2, generator=g)
        seen1.append(n1)
        seen2.append(n2.reshape(-1))
        # d/dw of sum(w * noise) is the noise; w2 also gets the deterministic 2*w2 term
        return (w1 * n1).sum() + (w2 * n2).sum() + (w2 ** 2).sum()

    out = M.gradient_snr(loss_fn, {"a": [w1], "b": [w2], "ab": [w1, w2], "u": [unused]}, 400)
    assert set(out) == {"a", "b", "ab", "u"}
    grads1 = torch.stack(seen1)
    grads2 = torch.stack(seen2) + 2 * w2.detach().reshape(-1)
    assert out["a"] == pytest.approx(M.snr_from_samples(grads1), rel=1e-9)
    assert out["b"] == pytest.approx(M.snr_from_samples(grads2), rel=1e-9)
    assert out["ab"] == pytest.approx(M.snr_from_samples(torch.cat([grads1, grads2], 1)), rel=1e-9)
    assert math.isnan(out["u"])  # identically zero gradient: excluded, nothing left
    # statistically: SNR of w1's gradient ~ mean |mu1| / 1
    assert out["a"] == pytest.approx(float(mu1.abs().mean()), rel=0.15)
    assert w1.grad is None  # .grad untouched


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_samples=1), "num_samples"), (dict(num_samples=0), "num_samples"),
    (dict(parameter_groups={}), "parameter_groups"),
    (dict(parameter_groups={"a": []}), "parameter_groups"),
    (dict(parameter_groups={"a": [torch.zeros(2)]}), "parameter_groups"),
    (dict(loss_fn=None), "loss_fn"),
    (dict(std_eps=0.0), "std_eps"), (dict(zero_std="drop"), "zero_std"),
])
def test_gradient_snr_bad_inputs(kwargs, name):
    w = torch.zeros(2, requires_grad=True)
    args = dict(loss_fn=lambda: (w * torch.randn(2)).sum(), parameter_groups={"w": [w]},
                num_samples=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}"):
        M.gradient_snr(**args)


def test_gradient_snr_vector_loss_and_snr_bad_inputs():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="^loss_fn"):
        M.gradient_snr(lambda: w * torch.randn(2), {"w": [w]}, 3)
    with pytest.raises(ValueError, match="^grads"):
        M.snr_from_samples(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="^grads"):
        M.snr_from_samples(torch.zeros(5))


# -------------------------------------------------------- support consistency (13)

def _codes(supports, d):
    z = torch.zeros(len(supports), d)
    for j, s in enumerate(supports):
        z[j, list(s)] = torch.randn(len(s)).abs() + 0.1
    return z


def test_jaccard_identical_disjoint_hand_case():
    same = _codes([{0, 2}, {0, 2}, {0, 2}], 4)
    disjoint = _codes([{0}, {1}, {2, 3}], 4)
    hand = _codes([{0, 1}, {1, 2}, {0, 1, 2}], 4)  # C = 1/3, 2/3, 2/3 -> 5/9
    out = M.pairwise_jaccard(torch.stack([same, disjoint, hand]))
    assert out.shape == (3,)
    assert torch.allclose(out, torch.tensor([1.0, 0.0, 5 / 9], dtype=torch.float64))
    mask = torch.tensor([True, True, False, True])  # supports {0,1}, {1}, {0,1}: 1/2, 1, 1/2
    assert M.pairwise_jaccard(hand[None], atom_mask=mask).item() == pytest.approx(2 / 3)


def test_jaccard_empty_supports():
    both_empty = torch.zeros(1, 2, 3)
    assert M.pairwise_jaccard(both_empty).item() == 1.0
    assert M.pairwise_jaccard(both_empty, empty_value=0.0).item() == 0.0
    one_empty = _codes([set(), {1}], 3)[None]
    assert M.pairwise_jaccard(one_empty).item() == 0.0


def test_jaccard_matches_bruteforce_with_chunks():
    g = torch.Generator().manual_seed(10)
    codes = torch.randn(7, 5, 6, generator=g)
    codes[torch.rand(7, 5, 6, generator=g) < 0.6] = 0.0
    mask = torch.tensor([True, True, False, True, True, False])
    out = M.pairwise_jaccard(codes, atom_mask=mask, chunk_size=3)
    for k in range(7):
        sup = [{i for i in range(6) if codes[k, j, i] != 0 and mask[i]} for j in range(5)]
        vals = [len(a & b) / len(a | b) if a | b else 1.0
                for a, b in itertools.permutations(sup, 2)]
        assert out[k].item() == pytest.approx(sum(vals) / 20)
    assert bool(((out >= 0) & (out <= 1)).all())


def test_active_atoms():
    A = torch.zeros(4, 3)
    A[0, 0] = math.sqrt(0.05)
    A[:2, 1] = math.sqrt(0.05)                 # ||a||^2 = 0.1: not > 0.1
    A[1, 2] = math.sqrt(0.2)
    assert M.active_atoms(A).tolist() == [False, False, True]
    assert M.active_atoms(A, threshold=0.01).tolist() == [True, True, True]
    B = torch.tensor([[0.5, 0.5], [0.0, 0.01]])    # squared norms exactly 0.25 and 0.2501
    assert M.active_atoms(B, threshold=0.25).tolist() == [False, True]  # strict >
    with pytest.raises(ValueError, match="^threshold"):
        M.active_atoms(A, threshold=-1.0)


@pytest.mark.parametrize("codes, mask, name", [
    (torch.zeros(3, 1, 4), None, "codes"),
    (torch.zeros(3, 4), None, "codes"),
    (torch.zeros(3, 2, 4), torch.ones(5, dtype=torch.bool), "atom_mask"),
    (torch.zeros(3, 2, 4), torch.ones(4), "atom_mask"),
])
def test_jaccard_bad_inputs(codes, mask, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        M.pairwise_jaccard(codes, atom_mask=mask)


# ------------------------------------------------------------------------- plots

def _check_png(path):
    data = path.read_bytes()
    assert len(data) > 100 and data[:8] == PNG_SIGNATURE
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_plot_dictionary_order_and_png(tmp_path):
    g = torch.Generator().manual_seed(11)
    A = torch.zeros(16, 6)  # exact norms 0.5, 3, 0, 2, 1, 0.5: one entry per column, signs mixed
    rows = torch.randperm(16, generator=g)[:6]
    A[rows, torch.arange(6)] = torch.tensor([0.5, -3.0, 0.0, 2.0, -1.0, 0.5])
    order = P.plot_dictionary(A, tmp_path / "dict.png", patch_shape=(4, 4), ncols=4)
    _check_png(tmp_path / "dict.png")
    assert order.tolist() == [1, 3, 4, 0, 5, 2]  # descending norm, ties in index order
    norms = A.norm(dim=0).numpy()[order]
    assert (np.diff(norms) <= 0).all()
    order = P.plot_dictionary(A.numpy(), tmp_path / "sub" / "d2.png", patch_shape=(4, 4),
                              sort_by_norm=False)
    assert order.tolist() == list(range(6))
    _check_png(tmp_path / "sub" / "d2.png")


def test_a_long_dictionary_title_is_wrapped_inside_the_figure(tmp_path, monkeypatch):
    """dictionary.png's title names the prior, the estimator, the shift gradient and the
    sampling; on a 16-column figure that is wider than the figure and was clipped."""
    saved = []
    save = P._save_png
    monkeypatch.setattr(P, "_save_png", lambda fig, path: (saved.append(fig), save(fig, path))[1])
    title = ("Thresholded Laplacian, straight_shift, exact shift gradient, max J = 20: "
             "8000 steps, atoms by norm")
    P.plot_dictionary(torch.randn(256, 256), tmp_path / "d.png", title=title)
    fig = saved[0]
    renderer = fig.canvas.get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert fig._suptitle.get_text().replace("\n", " ") == title
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    for ax in fig.axes:                                   # the atoms start below it
        assert ax.get_window_extent(renderer).y1 <= box.y0 + 1


def test_plot_dictionary_zero_is_mid_gray(tmp_path):
    import matplotlib.image

    A = torch.zeros(64, 1)
    A[0, 0] = 1.0  # one bright pixel, the rest must be gray (0 -> middle of [-1, 1])
    P.plot_dictionary(A, tmp_path / "g.png", patch_shape=(8, 8), ncols=1)
    img = matplotlib.image.imread(tmp_path / "g.png")
    h, w = img.shape[:2]
    assert img[h // 2, w // 2, :3] == pytest.approx([0.5, 0.5, 0.5], abs=0.02)


@pytest.mark.parametrize("kwargs, name", [
    (dict(patch_shape=(3, 3)), "patch_shape"), (dict(A=torch.zeros(16)), "A"),
    (dict(ncols=0), "ncols"),
])
def test_plot_dictionary_bad_inputs(tmp_path, kwargs, name):
    args = dict(A=torch.zeros(16, 2), path=tmp_path / "x.png", patch_shape=(4, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}"):
        P.plot_dictionary(**args)
    assert not (tmp_path / "x.png").exists()


def test_plot_jaccard_histogram(tmp_path):
    g = torch.Generator().manual_seed(12)
    out = P.plot_jaccard_histogram({"max ELBO": torch.rand(200, generator=g),
                                    "average": np.random.default_rng(0).beta(2, 5, 200)},
                                   tmp_path / "jac.png")
    assert out == tmp_path / "jac.png"
    _check_png(out)
    with pytest.raises(ValueError, match="^values_by_label"):
        P.plot_jaccard_histogram({}, tmp_path / "j2.png")
    with pytest.raises(ValueError, match="^values_by_label"):
        P.plot_jaccard_histogram({"a": [float("nan")]}, tmp_path / "j2.png")


def test_plot_metric_curves_from_jsonl(tmp_path):
    lines = [dict(epoch=e, val_loss=100.0 / (e + 1), pct_nonzero=10.0 + e) for e in range(5)]
    lines.append(dict(epoch=5, pct_nonzero=16.0))  # no val_loss: skipped for that key
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    records = P.load_jsonl(tmp_path / "m.jsonl")
    assert records == lines
    out = P.plot_metric_curves(records, ["val_loss", "pct_nonzero"], tmp_path / "c.png")
    _check_png(out)
    _check_png(P.plot_metric_curves(records, "val_loss", tmp_path / "c1.png", logy=True))
    with pytest.raises(ValueError, match="^keys"):
        P.plot_metric_curves(records, ["missing"], tmp_path / "c2.png")
    with pytest.raises(ValueError, match="^records"):
        P.plot_metric_curves([], ["val_loss"], tmp_path / "c2.png")


# -------------------------------------------------------- atom shapes (Figure 3)

def _gabor(side=16, sigma=2.0, theta=0.7, freq=0.2, center=(7.5, 7.5)):
    y, x = torch.meshgrid(torch.arange(side, dtype=torch.float64),
                          torch.arange(side, dtype=torch.float64), indexing="ij")
    u = (x - center[1]) * math.cos(theta) + (y - center[0]) * math.sin(theta)
    envelope = torch.exp(-((x - center[1]) ** 2 + (y - center[0]) ** 2) / (2 * sigma ** 2))
    return (envelope * torch.cos(2 * math.pi * freq * u)).flatten()


def test_atom_shapes_tell_gabors_from_noise_blobs_and_gratings():
    g = torch.Generator().manual_seed(0)
    gabors = torch.stack([_gabor(sigma=s, theta=t, freq=f, center=c)
                          for s in (1.5, 2.0, 3.0) for t in (0.0, 0.7, 2.0)
                          for f in (0.2, 0.3) for c in ((7.5, 7.5), (4.0, 11.0))], 1)
    noise = torch.randn(256, 200, generator=g, dtype=torch.float64)
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = torch.exp(-((x - 7.5) ** 2 + (y - 7.5) ** 2) / 8.0).flatten()[:, None]
    grating = torch.cos(2 * math.pi * 0.25 * x).flatten()[:, None]   # oriented, not local
    loc, ori = M.atom_shapes(gabors)
    assert (loc > 0.6).all() and (ori > 0.5).all()
    loc, ori = M.atom_shapes(noise)
    assert (loc < 0.5).all() and (ori < 0.4).all()
    loc, ori = M.atom_shapes(blob)
    assert loc.item() > 0.9 and ori.item() == pytest.approx(0.0, abs=1e-12)
    loc, ori = M.atom_shapes(grating)
    assert loc.item() == pytest.approx(0.25, abs=0.02) and ori.item() == pytest.approx(1.0)
    # scale and sign of an atom do not matter
    assert torch.allclose(torch.stack(M.atom_shapes(-3.0 * gabors)),
                          torch.stack(M.atom_shapes(gabors)))
    mixed = torch.cat([gabors[:, :12], noise[:, :4], blob, grating], 1)
    assert M.gabor_like_fraction(mixed) == pytest.approx(12 / 18)
    assert M.gabor_like_fraction(noise) == 0.0


def test_atom_shapes_bad_inputs():
    with pytest.raises(ValueError, match="^A"):
        M.atom_shapes(torch.zeros(255, 3))
    with pytest.raises(ValueError, match="^A"):
        M.atom_shapes(torch.zeros(256))
    with pytest.raises(ValueError, match="^window"):
        M.atom_shapes(torch.zeros(256, 3), window=17)


def test_duplicate_atoms():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(256, 6, generator=g, dtype=torch.float64)
    assert M.duplicate_atom_fraction(A) == 0.0           # random directions in 256-D
    A[:, 1] = -2.0 * A[:, 0]                             # same atom, other sign and scale
    A[:, 2] = A[:, 3] + 0.1 * torch.randn(256, generator=g, dtype=torch.float64)
    A[:, 5] = 0.0                                        # no direction: no duplicate
    assert M.duplicate_atom_fraction(A) == pytest.approx(4 / 6)
    assert M.duplicate_atom_fraction(A, min_cosine=0.999) == pytest.approx(2 / 6)  # 0 and 1
    with pytest.raises(ValueError, match="^min_cosine"):
        M.duplicate_atom_fraction(A, min_cosine=-0.1)
