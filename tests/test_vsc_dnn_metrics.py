"""Known-answer tests of the DNN-generator metrics in vsc.metrics (section 4.2, Figures 6-8)."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from vsc import metrics as M


def exact_moments(n, mean, cov, seed=0):
    """n samples whose *sample* mean and covariance (denominator n - 1) are exactly
    ``mean`` and ``cov`` (up to float64 round-off): whitened Gaussian draws, recolored."""
    rng = np.random.default_rng(seed)
    f = len(mean)
    x = rng.standard_normal((n, f))
    x -= x.mean(0)
    w = np.linalg.cholesky(np.cov(x, rowvar=False))
    x = x @ np.linalg.inv(w).T                      # sample covariance exactly I
    x = x @ np.linalg.cholesky(cov).T + mean        # sample covariance exactly cov
    return torch.from_numpy(x)


# ------------------------------------------------------------------ Frechet distance

def test_frechet_distance_diagonal_closed_form():
    # N(mu1, diag(s1^2)) vs N(mu2, diag(s2^2)): d^2 = |mu1 - mu2|^2 + sum (s1 - s2)^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    s1, s2 = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 2.0, 1.5, 0.1])
    a = exact_moments(500, mu1, np.diag(s1**2), seed=1)
    b = exact_moments(300, mu2, np.diag(s2**2), seed=2)
    want = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()  # 1+0+4+1 + 1+0+1+8.41 = 16.41
    assert want == pytest.approx(16.41)
    assert M.frechet_distance(a, b) == pytest.approx(want, rel=1e-10)
    assert M.frechet_distance(b, a) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_general_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(3)
    f = 6
    q1, q2 = rng.standard_normal((f, f)), rng.standard_normal((f, f))
    c1, c2 = q1 @ q1.T + 0.1 * np.eye(f), q2 @ q2.T + 0.1 * np.eye(f)
    mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
    a = exact_moments(400, mu1, c1, seed=4)
    b = exact_moments(400, mu2, c2, seed=5)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    want = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean)
    assert M.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_sampled_gaussians_within_stated_tolerance():
    # Drawn (not exact-moment) samples: 20,000 draws per set in F = 3; the estimate's
    # standard error is ~0.05 here, so 0.25 is 5 sigma.
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0])
    b = torch.randn(20_000, 3, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0])
    want = 1.0 + (0.0 + 1.0 + 4.0)  # |mu|^2 + sum (s_a - s_b)^2 with s_b = 1
    assert M.frechet_distance(a, b) == pytest.approx(want, abs=0.25)


def test_frechet_distance_zero_symmetric_translation_and_dtypes():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(64, 10, generator=g)
    b = torch.randn(50, 10, generator=g) * 1.5
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert M.frechet_distance(a, b) == pytest.approx(M.frechet_distance(b, a), rel=1e-10)
    shift = torch.arange(10, dtype=torch.float32)
    d0 = M.frechet_distance(a, a + shift)  # same covariance: only the means differ
    assert d0 == pytest.approx(float(shift.pow(2).sum()), rel=1e-9)
    assert M.frechet_distance(a.half(), b.half()) == pytest.approx(
        M.frechet_distance(a.half().float(), b.half().float()), rel=1e-12)
    # fewer samples than features: rank-deficient covariances still give a real value
    small = M.frechet_distance(a[:5], b[:7])
    assert math.isfinite(small) and small > 0


def test_frechet_distance_nan_and_bad_inputs():
    a = torch.randn(10, 3)
    bad = a.clone()
    bad[2, 1] = float("nan")
    assert math.isnan(M.frechet_distance(a, bad))
    bad[2, 1] = float("inf")
    assert math.isnan(M.frechet_distance(bad, a))
    with pytest.raises(ValueError, match="^b: has 4 features"):
        M.frechet_distance(a, torch.randn(10, 4))
    with pytest.raises(ValueError, match="^a: needs at least 2 rows"):
        M.frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="^b: expected a 2-D"):
        M.frechet_distance(a, a[0])
    with pytest.raises(ValueError, match="^a: expected a floating"):
        M.frechet_distance(a.long(), a)


# ------------------------------------------------------------------------- MSE

def test_mse_per_pixel_known_value_and_errors():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 2.0], [0.0, -1.0]]]])
    assert M.mse_per_pixel(x, x_hat) == pytest.approx((1 + 4 + 1) / 8)
    assert M.mse_per_pixel(x, x_hat) == pytest.approx(
        float(torch.nn.functional.mse_loss(x_hat, x)))
    x_hat[0, 0, 0, 0] = float("nan")
    assert math.isnan(M.mse_per_pixel(x, x_hat))
    with pytest.raises(ValueError, match="^x_hat: shape"):
        M.mse_per_pixel(x, x_hat[:1])
    with pytest.raises(ValueError, match="^x: is empty"):
        M.mse_per_pixel(x[:0], x_hat[:0])


# -------------------------------------------------------------- estimated dictionary

def test_estimated_dictionary_recovers_a_known_dictionary():
    g = torch.Generator().manual_seed(0)
    n, big_d, d = 2000, 48, 12
    A = torch.randn(big_d, d, generator=g, dtype=torch.float64)
    Z = torch.randn(n, d, generator=g, dtype=torch.float64) * (torch.rand(n, d, generator=g) < 0.3)
    X = Z @ A.T
    A_hat = M.estimated_dictionary(X, Z)
    assert A_hat.shape == (big_d, d) and A_hat.dtype == torch.float64
    assert torch.allclose(A_hat, A, atol=1e-10)
    # images as (N, C, H, W) are flattened row-major
    A_img = M.estimated_dictionary(X.reshape(n, 3, 4, 4).float(), Z.float())
    assert torch.allclose(A_img, A, atol=1e-4)
    # with noise of std 0.1 the error of each entry is ~0.1 / sqrt(0.3 n) ~ 0.004
    noisy = X + 0.1 * torch.randn(n, big_d, generator=g, dtype=torch.float64)
    err = (M.estimated_dictionary(noisy, Z) - A).abs().max()
    assert 1e-4 < err < 0.03


def test_estimated_dictionary_is_the_papers_formula_and_handles_dead_latents():
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((300, 6)) * (rng.random((300, 6)) < 0.5)
    Z[:, 2] = 0.0  # a latent that never fires
    X = rng.standard_normal((300, 20))
    # section 4.2 with samples as columns: (X Z^T)(Z Z^T)^+ (the notebook's C_sr pinv(C_rr))
    ref = (X.T @ Z / 300) @ np.linalg.pinv(Z.T @ Z / 300)
    out = M.estimated_dictionary(torch.from_numpy(X), torch.from_numpy(Z)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-10)
    assert np.all(out[:, 2] == 0)
    ridge = M.estimated_dictionary(torch.from_numpy(X), torch.from_numpy(Z), ridge=5.0).numpy()
    np.testing.assert_allclose(ridge, X.T @ Z @ np.linalg.inv(Z.T @ Z + 5.0 * np.eye(6)),
                               atol=1e-10)


def test_estimated_dictionary_bad_inputs():
    X, Z = torch.randn(10, 5), torch.randn(10, 3)
    with pytest.raises(ValueError, match="^Z: has 9 rows"):
        M.estimated_dictionary(X, Z[:9])
    with pytest.raises(ValueError, match="^ridge"):
        M.estimated_dictionary(X, Z, ridge=-1.0)
    with pytest.raises(ValueError, match="^X: expected"):
        M.estimated_dictionary(X[0], Z)
    Z[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        M.estimated_dictionary(X, Z)


# ------------------------------------------------------------------ point-biserial

def test_point_biserial_equals_scipy():
    rng = np.random.default_rng(2)
    n, d, a = 257, 5, 4
    Y = (rng.random((n, a)) < np.array([0.1, 0.5, 0.7, 0.03])).astype(np.int64)
    Z = rng.standard_normal((n, d)) + 0.8 * Y[:, [0, 1, 2, 3, 1]]
    Z[rng.random((n, d)) < 0.4] = 0.0  # sparse codes
    out = M.point_biserial(torch.from_numpy(Z).float(), torch.from_numpy(Y))
    assert out.shape == (d, a) and out.dtype == torch.float64
    for i in range(d):
        for m in range(a):
            want = scipy.stats.pointbiserialr(Y[:, m], Z[:, i].astype(np.float32)).statistic
            assert out[i, m].item() == pytest.approx(want, abs=1e-6)
    # the paper's formula (M1 - M0) / s_N * sqrt(n1 n0) / N, written out for one entry
    z, y = Z[:, 4], Y[:, 1]
    m1, m0, n1, n0 = z[y == 1].mean(), z[y == 0].mean(), (y == 1).sum(), (y == 0).sum()
    paper = (m1 - m0) / z.std() * math.sqrt(n1 * n0) / n
    assert out[4, 1].item() == pytest.approx(paper, abs=1e-6)
    bools = M.point_biserial(torch.from_numpy(Z), torch.from_numpy(Y).bool())
    np.testing.assert_allclose(bools.numpy(), out.numpy(), atol=1e-6)


def test_point_biserial_constant_columns_are_nan():
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((40, 3))
    Z[:, 1] = 0.1  # constant, and 0.1 is inexact in binary: centering leaves round-off
    Y = (rng.random((40, 3)) < 0.5).astype(np.float32)
    Y[:, 2] = 1.0  # an attribute every sample has
    out = M.point_biserial(torch.from_numpy(Z), torch.from_numpy(Y))
    assert torch.isnan(out[1]).all() and torch.isnan(out[:, 2]).all()
    assert torch.isfinite(out[[0, 2]][:, [0, 1]]).all()
    Z[5, 0] = float("nan")
    out = M.point_biserial(torch.from_numpy(Z), torch.from_numpy(Y))
    assert torch.isnan(out[0]).all() and torch.isfinite(out[2, :2]).all()


def test_point_biserial_bad_inputs():
    Z, Y = torch.randn(10, 3), torch.randint(0, 2, (10, 2))
    with pytest.raises(ValueError, match="^Y: attributes must be 0 or 1"):
        M.point_biserial(Z, Y * 2 - 1)
    with pytest.raises(ValueError, match="^Y: has 9 rows"):
        M.point_biserial(Z, Y[:9])
    with pytest.raises(ValueError, match="^Z: needs at least 2 rows"):
        M.point_biserial(Z[:1], Y[:1])
