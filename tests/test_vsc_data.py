"""Tests of vsc.data: whitening, patches, standardization, split, cache, sources."""

import os
import sys

import numpy as np
import pytest
import scipy.io
import torch
from skimage import io as skio

import vsc.data as data
from vsc.data import (EMBEDDED_TRAIN, EMBEDDED_VAL, embedded_images, extract_patches,
                      load_image_folder, load_images_mat, load_patches, standardize,
                      whiten_image)


# --------------------------------------------------------------------------- helpers

def pink_noise(shape, seed=0):
    """Gaussian noise with power spectrum ~ 1/|f|^2 (amplitude ~ 1/|f|), like natural images."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    rho = np.hypot(fx, fy)
    rho[0, 0] = 1.0
    spec = np.fft.fft2(rng.standard_normal(shape)) / rho
    spec[0, 0] = 0.0
    return np.real(np.fft.ifft2(spec)) + 3.0  # a non-zero mean that whitening must remove


def spectrum_slope(image, lo=0.05, hi=0.2):
    """Slope of log radially-averaged power vs log |f| over [lo, hi] cycles/pixel."""
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    rho = np.hypot(fx, fy)
    edges = np.linspace(lo, hi, 16)
    centers, means = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        m = (rho >= a) & (rho < b)
        centers.append(rho[m].mean())
        means.append(power[m].mean())
    return np.polyfit(np.log(centers), np.log(means), 1)[0]


def write_mat(path, var="IMAGES", shape=(64, 64, 4), seed=0, offsets=None):
    rng = np.random.default_rng(seed)
    arr = rng.standard_normal(shape)
    if offsets is not None:
        arr = arr + np.asarray(offsets, dtype=float)[None, None, :]
    scipy.io.savemat(path, {var: arr})
    return arr


def write_pngs(folder, n=3, size=(48, 40), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        shape = size + (3,) if i % 2 else size  # mix RGB and gray
        img = (rng.random(shape) * 255).astype(np.uint8)
        name = f"img{i}.png" if i != 1 else f"img{i}.PNG"
        skio.imsave(folder / name, img, check_contrast=False)
        names.append(name)
    return names


# --------------------------------------------------------------------------- whitening

@pytest.mark.parametrize("shape", [(128, 128), (96, 160)])
def test_whitening_flattens_pink_noise_spectrum(shape):
    img = pink_noise(shape)
    before = spectrum_slope(img)
    out = whiten_image(img)
    after = spectrum_slope(out)
    assert before < -1.6, before          # the input really is ~1/f^2
    assert abs(after) < 0.4, after        # flat over mid frequencies after whitening
    assert out.shape == shape and out.dtype == np.float64
    assert abs(out.mean()) < 1e-10
    assert out.var() == pytest.approx(1.0, rel=1e-10)   # documented: unit variance per image


def test_whitening_rolls_off_high_frequencies_and_edge_cases():
    img = np.random.default_rng(1).standard_normal((64, 64))   # flat spectrum in
    out = whiten_image(img, f0_fraction=0.1)
    # R(f) = |f| exp(-(|f|/f0)^4): with f0 = 0.1, almost no power beyond 0.2 cycles/pixel
    power = np.abs(np.fft.fft2(out)) ** 2
    rho = np.hypot(np.fft.fftfreq(64)[None, :], np.fft.fftfreq(64)[:, None])
    assert power[rho > 0.2].sum() / power.sum() < 1e-3
    assert np.all(whiten_image(np.full((16, 16), 0.7)) == 0)   # constant image: no NaN
    with pytest.raises(ValueError, match="2-D"):
        whiten_image(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="f0_fraction"):
        whiten_image(img, f0_fraction=0)


# --------------------------------------------------------------------------- patches

def test_extract_patches_content_shape_and_border():
    h, w = 30, 25
    img = np.arange(h * w, dtype=float).reshape(h, w)
    p = extract_patches([img], 500, 5, np.random.default_rng(0), border=4)
    assert p.shape == (500, 25) and p.dtype == np.float64
    r0, c0 = np.divmod(p[:, 0].astype(int), w)
    expected = (r0[:, None, None] * w + c0[:, None, None]
                + np.arange(5)[None, :, None] * w + np.arange(5)[None, None, :])
    np.testing.assert_array_equal(p, expected.reshape(500, 25))
    assert r0.min() == 4 and r0.max() == h - 5 - 4      # every allowed corner is reached
    assert c0.min() == 4 and c0.max() == w - 5 - 4
    # deterministic for a seed, different for another
    a = extract_patches([img, img.T], 50, 5, np.random.default_rng(3))
    b = extract_patches([img, img.T], 50, 5, np.random.default_rng(3))
    c = extract_patches([img, img.T], 50, 5, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(0)
    train = rng.normal(2.0, 3.0, size=(4000, 6)) * np.arange(1, 7)
    val = rng.normal(-1.0, 0.5, size=(500, 6))
    tr, va, mean, std = standardize(train, val)
    np.testing.assert_allclose(mean, train.mean(0))
    np.testing.assert_allclose(std, train.std(0))
    np.testing.assert_allclose(tr.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(tr.std(0), 1, rtol=1e-12)
    np.testing.assert_allclose(va, (val - train.mean(0)) / train.std(0))
    assert np.all(np.abs(va.mean(0)) > 0.1)     # not standardized with its own statistics


def test_load_patches_shapes_dtype_seed(tmp_path):
    write_mat(tmp_path / "IMAGES.mat")
    kw = dict(n_train=300, n_val=70, patch_size=8, cache_dir=tmp_path / "cache")
    ps = load_patches(tmp_path / "IMAGES.mat", seed=0, **kw)
    assert ps.train.shape == (300, 64) and ps.val.shape == (70, 64)
    assert ps.mean.shape == (64,) and ps.std.shape == (64,)
    for t in (ps.train, ps.val, ps.mean, ps.std):
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert ps.patch_size == 8 and ps.info["seed"] == 0
    again = load_patches(tmp_path / "IMAGES.mat", seed=0, cache_dir=tmp_path / "cache2",
                         **{k: v for k, v in kw.items() if k != "cache_dir"})
    assert again.info["cache_hit"] is False       # recomputed, not read back
    assert torch.equal(ps.train, again.train) and torch.equal(ps.val, again.val)
    other = load_patches(tmp_path / "IMAGES.mat", seed=1, **kw)
    assert not torch.equal(ps.train, other.train)
    # n_val does not change the training patches (independent streams)
    more_val = load_patches(tmp_path / "IMAGES.mat", seed=0, **{**kw, "n_val": 90})
    assert torch.equal(more_val.train, ps.train)


def test_val_standardized_with_train_stats_and_disjoint_images(tmp_path):
    # 5 images with distinct offsets: 4 train (offsets 0..3), the last held out (offset 50)
    write_mat(tmp_path / "IMAGES.mat", shape=(40, 40, 5), offsets=[0, 1, 2, 3, 50])
    ps = load_patches(tmp_path / "IMAGES.mat", n_train=2000, n_val=300, patch_size=6,
                      cache_dir=tmp_path / "c")
    assert ps.info["whiten"] is False
    assert ps.info["train_images"] == [f"IMAGES[{i}]" for i in range(4)]
    assert ps.info["val_images"] == ["IMAGES[4]"]
    assert not set(ps.info["train_images"]) & set(ps.info["val_images"])
    np.testing.assert_allclose(ps.train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(ps.train.std(0, unbiased=False), 1, atol=1e-4)
    raw_val = ps.val * ps.std + ps.mean
    raw_train = ps.train * ps.std + ps.mean
    assert abs(raw_val.mean() - 50) < 0.5           # val patches come from the held-out image only
    assert raw_train.max() < 20                     # no training patch from the held-out image
    assert ps.val.mean() > 10                       # val not re-standardized with its own stats


# --------------------------------------------------------------------------- cache

def test_cache_hit_skips_recomputation(tmp_path, monkeypatch):
    write_mat(tmp_path / "IMAGES_RAW.mat", var="IMAGESr")
    kw = dict(n_train=200, n_val=50, patch_size=8, seed=5, cache_dir=tmp_path / "c")
    first = load_patches(tmp_path / "IMAGES_RAW.mat", **kw)
    assert first.info["cache_hit"] is False
    files = sorted(os.listdir(tmp_path / "c"))
    assert len(files) == 1 and files[0].endswith(".npz")

    def boom(*a, **k):
        raise AssertionError("recomputed on a cache hit")

    for name in ("whiten_image", "extract_patches", "load_images_mat"):
        monkeypatch.setattr(data, name, boom)
    second = load_patches(tmp_path / "IMAGES_RAW.mat", **kw)
    assert second.info["cache_hit"] is True
    for k in ("train", "val", "mean", "std"):
        assert torch.equal(getattr(first, k), getattr(second, k))
    assert second.info["train_images"] == first.info["train_images"]
    # a changed parameter misses (and would have to recompute)
    for change in ({"seed": 6}, {"n_val": 51}, {"patch_size": 7}, {"whiten": False}):
        with pytest.raises(AssertionError, match="recomputed"):
            load_patches(tmp_path / "IMAGES_RAW.mat", **{**kw, **change})
    monkeypatch.undo()
    # changed file content misses too
    write_mat(tmp_path / "IMAGES_RAW.mat", var="IMAGESr", seed=9)
    third = load_patches(tmp_path / "IMAGES_RAW.mat", **kw)
    assert third.info["cache_hit"] is False and not torch.equal(third.train, first.train)


def test_cache_dir_from_env_and_atomic_write(tmp_path, monkeypatch):
    write_mat(tmp_path / "IMAGES.mat", shape=(32, 32, 3))
    monkeypatch.setenv("VSC_CACHE", str(tmp_path / "env_cache"))
    ps = load_patches(tmp_path / "IMAGES.mat", n_train=10, n_val=5, patch_size=4)
    assert ps.info["cache_path"].startswith(str(tmp_path / "env_cache"))

    real_savez = np.savez

    def partial_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", partial_then_fail)
    with pytest.raises(OSError, match="disk full"):
        load_patches(tmp_path / "IMAGES.mat", n_train=11, n_val=5, patch_size=4,
                     cache_dir=tmp_path / "atomic")
    assert os.listdir(tmp_path / "atomic") == []        # neither .npz nor temp file left
    monkeypatch.setattr(np, "savez", real_savez)
    ok = load_patches(tmp_path / "IMAGES.mat", n_train=11, n_val=5, patch_size=4,
                      cache_dir=tmp_path / "atomic")
    assert ok.info["cache_hit"] is False and ok.train.shape == (11, 16)


# --------------------------------------------------------------------------- sources

def test_images_mat_whitened_and_raw(tmp_path, monkeypatch):
    arr = write_mat(tmp_path / "IMAGES.mat", shape=(64, 64, 4))
    write_mat(tmp_path / "IMAGES_RAW.mat", var="IMAGESr", shape=(64, 64, 4))
    images, whitened = load_images_mat(tmp_path / "IMAGES.mat")
    assert whitened is True and len(images) == 4
    np.testing.assert_array_equal(images["IMAGES[2]"], arr[:, :, 2])
    images_r, whitened_r = load_images_mat(tmp_path / "IMAGES_RAW.mat")
    assert whitened_r is False and len(images_r) == 4

    calls = []
    real = data.whiten_image
    monkeypatch.setattr(data, "whiten_image", lambda im, f0=0.4: calls.append(1) or real(im, f0))
    kw = dict(n_train=100, n_val=20, patch_size=16, cache_dir=tmp_path / "c")
    ps = load_patches(tmp_path / "IMAGES.mat", **kw)
    assert ps.info["whiten"] is False and calls == []         # no second whitening
    # unstandardized training patches are exact sub-blocks of the stored images
    p = (ps.train[0] * ps.std + ps.mean).double().numpy().reshape(16, 16)
    assert any(np.allclose(p, arr[r:r + 16, c:c + 16, i], atol=1e-4)
               for i in range(3) for r in range(49) for c in range(49))
    raw = load_patches(tmp_path / "IMAGES_RAW.mat", **kw)
    assert raw.info["whiten"] is True and len(calls) == 4    # raw images get whitened
    forced = load_patches(tmp_path / "IMAGES.mat", whiten=True, **kw)
    assert forced.info["whiten"] is True and len(calls) == 8
    assert raw.info["val_images"] == ["IMAGESr[3]"]


def test_image_folder(tmp_path):
    names = write_pngs(tmp_path / "imgs", n=5)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    images = load_image_folder(tmp_path / "imgs")
    assert list(images) == sorted(names)
    for im in images.values():
        assert im.shape == (48, 40) and im.dtype == np.float64
        assert 0 <= im.min() and im.max() <= 1
    ps = load_patches(tmp_path / "imgs", n_train=120, n_val=30, patch_size=8,
                      cache_dir=tmp_path / "c")
    assert ps.train.shape == (120, 64) and ps.val.shape == (30, 64)
    assert ps.info["whiten"] is True
    assert ps.info["val_images"] == ["img4.png"]              # last max(1, 5 // 5) by name
    assert ps.info["train_images"] == sorted(names)[:-1]
    assert ps.source == str((tmp_path / "imgs").resolve())


def test_embedded_images_load_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "pooch", None)   # any download attempt would fail
    images = embedded_images()
    assert list(images) == list(EMBEDDED_TRAIN + EMBEDDED_VAL)
    for name, im in images.items():
        assert im.ndim == 2 and im.dtype == np.float64, name
        assert min(im.shape) >= 256, name
        assert 0 <= im.min() and im.max() <= 1 and im.std() > 0.01, name


def test_embedded_default(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pooch", None)
    ps = load_patches(n_train=500, n_val=100, cache_dir=tmp_path)
    assert ps.source == "embedded"
    assert ps.train.shape == (500, 256) and ps.val.shape == (100, 256)
    assert ps.info["train_images"] == list(EMBEDDED_TRAIN)
    assert ps.info["val_images"] == list(EMBEDDED_VAL)
    assert not set(EMBEDDED_TRAIN) & set(EMBEDDED_VAL)
    assert ps.info["whiten"] is True
    assert torch.isfinite(ps.train).all() and torch.isfinite(ps.val).all()


# --------------------------------------------------------------------------- errors

def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        load_patches(tmp_path / "missing.mat", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="nofolder"):
        load_image_folder(tmp_path / "nofolder")
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        load_images_mat(tmp_path / "nope.mat")
    scipy.io.savemat(tmp_path / "other.mat", {"X": np.zeros((8, 8, 2))})
    with pytest.raises(ValueError, match=r"no known image variable.*IMAGES.*IMAGESr.*'X'"):
        load_patches(tmp_path / "other.mat", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="contains no images"):
        load_patches(tmp_path / "empty", cache_dir=tmp_path)
    write_pngs(tmp_path / "one", n=1)
    with pytest.raises(ValueError, match="at least 2 images"):
        load_patches(tmp_path / "one", cache_dir=tmp_path)
    write_mat(tmp_path / "IMAGES.mat", shape=(20, 24, 3))
    with pytest.raises(ValueError, match="patch_size 21 is larger than image"):
        load_patches(tmp_path / "IMAGES.mat", patch_size=21, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="larger than image"):
        extract_patches([np.zeros((10, 10))], 5, 11, 0)
    for bad in ({"n_train": 0}, {"n_val": 0}, {"n_train": -3}, {"patch_size": 0},
                {"n_train": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            load_patches(tmp_path / "IMAGES.mat", cache_dir=tmp_path, **bad)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported patch source"):
        load_patches(tmp_path / "x.txt", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown embedded image 'lena'"):
        embedded_images(["lena"])
    assert list(tmp_path.glob("*.npz")) == []   # nothing cached by failed calls
