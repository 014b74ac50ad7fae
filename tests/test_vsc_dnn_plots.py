"""Tests of the DNN-generator figures in vsc.plots (Figures 6, 7, 8, 19): files written,
what is shown, and bad input."""

import math

import numpy as np
import pytest
import torch

from vsc import plots as P

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))


# ---------------------------------------------------------------- Figure 6

def test_estimated_dictionary_layout_and_file(tmp_path):
    d = 100
    A = torch.randn(3 * 8 * 8, d, generator=torch.Generator().manual_seed(0))
    A = A / A.norm(dim=0) * torch.arange(1, d + 1)  # norm of column i is i + 1
    shown = P.plot_estimated_dictionary(A, tmp_path / "dict.png", (3, 8, 8))
    # row r: the 8 entries after position floor(100 r / 8) of the descending-norm order
    want = np.concatenate([99 - (np.arange(8) + (100 * r) // 8) for r in range(8)])
    assert np.array_equal(shown, want)
    assert_png(tmp_path / "dict.png")
    # small dictionaries are shown whole, in order; a dead (zero) entry is allowed
    A_small = torch.randn(28 * 28, 10, dtype=torch.float64)
    A_small[:, 3] = 0
    shown = P.plot_estimated_dictionary(A_small, tmp_path / "small.png", (1, 28, 28),
                                        title="digits, thresholded Gaussian")
    assert sorted(shown.tolist()) == list(range(10)) and shown[-1] == 3
    assert_png(tmp_path / "small.png")


def test_estimated_dictionary_bad_input(tmp_path):
    A = torch.randn(784, 5)
    with pytest.raises(ValueError, match="^image_shape: \\(1, 28, 27\\) has 756 values"):
        P.plot_estimated_dictionary(A, tmp_path / "x.png", (1, 28, 27))
    with pytest.raises(ValueError, match="^image_shape: expected \\(C, H, W\\) with C = 1 or 3"):
        P.plot_estimated_dictionary(A, tmp_path / "x.png", (2, 28, 14))
    with pytest.raises(ValueError, match="^A_est: expected a 2-D"):
        P.plot_estimated_dictionary(A[:, 0], tmp_path / "x.png", (1, 28, 28))
    A[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^A_est: contains NaN"):
        P.plot_estimated_dictionary(A, tmp_path / "x.png", (1, 28, 28))
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- Figure 8

def test_point_biserial_top_latents_and_file(tmp_path):
    d, names = 30, [f"digit_{c}" for c in range(10)]
    R = np.zeros((d, 10))
    R[7, 2] = -0.8     # the strongest correlate of digit_2 is negative
    R[5, 2] = 0.5
    R[11, 4] = 0.6
    R[:, 9] = np.nan  # an attribute no sample has: undefined everywhere
    A = torch.randn(784, d)
    top = P.plot_point_biserial(torch.from_numpy(R), names, tmp_path / "pb.png",
                                A_est=A, image_shape=(1, 28, 28))
    assert [t["attribute"] for t in top] == names
    assert top[2] == {"attribute": "digit_2", "latent": 7, "rho": -0.8}
    assert top[4]["latent"] == 11 and top[9]["latent"] is None and math.isnan(top[9]["rho"])
    assert_png(tmp_path / "pb.png")
    P.plot_point_biserial(R, names, tmp_path / "heat_only.png", title="heatmap only")
    assert_png(tmp_path / "heat_only.png")


def test_point_biserial_celeba_default_selection(tmp_path):
    from _image_files import CELEBA_ATTRS

    R = np.random.default_rng(0).uniform(-0.3, 0.3, (16, 40))
    top = P.plot_point_biserial(R, CELEBA_ATTRS, tmp_path / "celeba.png",
                                A_est=np.random.rand(3 * 16 * 16, 16), image_shape=(3, 16, 16))
    assert [t["attribute"] for t in top] == list(P.FIGURE8_CELEBA_ATTRIBUTES)
    for t in top:
        j = CELEBA_ATTRS.index(t["attribute"])
        assert t["latent"] == int(np.argmax(np.abs(R[:, j])))
    assert_png(tmp_path / "celeba.png")


def test_point_biserial_bad_input(tmp_path):
    R = np.zeros((5, 3))
    with pytest.raises(ValueError, match="^attribute_names: 2 names for the 3 columns"):
        P.plot_point_biserial(R, ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="^R: correlations must lie in"):
        P.plot_point_biserial(R + 2, ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="^A_est: expected shape \\(784, 5\\)"):
        P.plot_point_biserial(R, ["a", "b", "c"], tmp_path / "x.png", A_est=np.zeros((784, 4)),
                              image_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="^A_est, image_shape: give both"):
        P.plot_point_biserial(R, ["a", "b", "c"], tmp_path / "x.png", A_est=np.zeros((784, 5)))
    with pytest.raises(ValueError, match="^attributes: 'd' is not one of"):
        P.plot_point_biserial(R, ["a", "b", "c"], tmp_path / "x.png", attributes=["d"])
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- Figure 19

def test_reconstructions_file_and_rows(tmp_path):
    x = torch.rand(12, 3, 16, 16)
    P.plot_reconstructions(x, x.flip(-1), tmp_path / "rec.png")
    assert_png(tmp_path / "rec.png")
    bad = x.clone()
    bad[0, :, 2, 2] = float("nan")  # a diverged model: drawn red, not as a plausible pixel
    P.plot_reconstructions(x[:, :1], {"Gaussian": x[:, :1] * 0.5, "Thresholded": bad[:, :1]},
                           tmp_path / "rows.png", max_images=4)
    assert_png(tmp_path / "rows.png")
    tile, has_nan = P._image_tile(bad[0].numpy())
    assert has_nan and tuple(tile[2, 2]) == (1.0, 0.0, 0.0)


def test_reconstructions_bad_input(tmp_path):
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="^x_hat: 'reconstruction' has shape"):
        P.plot_reconstructions(x, x[:3], tmp_path / "x.png")
    with pytest.raises(ValueError, match="^x_hat: 'b' has shape"):
        P.plot_reconstructions(x, {"a": x, "b": x[:, :, :4]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="^x: expected \\(N, C, H, W\\)"):
        P.plot_reconstructions(x[0], x[0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="^row_labels: expected 2 labels"):
        P.plot_reconstructions(x, x, tmp_path / "x.png", row_labels=["only one"])
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- Figure 7

def sweep_records():
    recs = []
    for seed in (0, 1337, 747):
        for dim in (16, 64, 256):
            recs.append(dict(prior="gaussian", latent_dim=dim, pct_nonzero_target=None,
                             val_mse=0.02 + 0.001 * dim / 64, fid=3.0 + seed % 3,
                             fid_label="FID (offline: test)", val_pct_nonzero=100.0,
                             multi_information=0.5 * dim, seed=seed))
            for pct in (5, 10, 20) if dim == 64 else (10,):
                recs.append(dict(prior="thresholded_gaussian", latent_dim=dim,
                                 pct_nonzero_target=pct, val_mse=0.03 - 0.0005 * pct,
                                 fid=2.0, fid_label="FID (offline: test)",
                                 val_pct_nonzero=pct * 1.1, multi_information=0.1 * dim,
                                 seed=seed))
    return recs


def test_figure7_file(tmp_path):
    recs = sweep_records()
    recs[0]["fid"] = float("nan")  # a diverged run: left out, counted
    del recs[1]["multi_information"]
    P.plot_figure7(recs, tmp_path / "fig7.png", title="Figure 7 on the embedded digits")
    assert_png(tmp_path / "fig7.png")
    # records without the optional multi-information still draw
    for r in recs:
        r.pop("multi_information", None)
    P.plot_figure7(recs, tmp_path / "fig7_no_mi.png", fixed_pct_nonzero=5, fixed_latent_dim=64)
    assert_png(tmp_path / "fig7_no_mi.png")


def test_figure7_bad_records(tmp_path):
    recs = sweep_records()
    del recs[2]["val_mse"]
    with pytest.raises(ValueError, match="^records: entry 2 lacks \\['val_mse'\\]"):
        P.plot_figure7(recs, tmp_path / "x.png")
    recs = sweep_records()
    recs[3]["fid_label"] = "FID (Inception-v3 pool3)"
    with pytest.raises(ValueError, match="^records: FIDs from different feature extractors"):
        P.plot_figure7(recs, tmp_path / "x.png")
    recs = sweep_records()
    recs[1]["pct_nonzero_target"] = 150
    with pytest.raises(ValueError, match="^records: entry 1 has pct_nonzero_target 150"):
        P.plot_figure7(recs, tmp_path / "x.png")
    with pytest.raises(ValueError, match="^records: expected a non-empty list"):
        P.plot_figure7([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
