"""Tests of vsc.fid: the FID Inception-v3 (architecture and weight loading; the real
weight file cannot be downloaded here), the offline classifier extractor (deterministic,
cached, honest label) and fid()."""

import math
import warnings

import pytest
import torch

from _image_files import write_celeba
from vsc.datasets import TensorImageDataset, load_image_dataset
from vsc.fid import (FIDInceptionV3, FeatureExtractor, fid, load_fid_inception,
                     make_feature_extractor)
from vsc.metrics import frechet_distance


# ------------------------------------------------------------------------ Inception

@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A state dict with the keys and shapes of pytorch-fid's file (random weights;
    without num_batches_tracked entries, which the 2019 file may lack)."""
    torch.manual_seed(0)
    state = {k: v for k, v in FIDInceptionV3().state_dict().items()
             if not k.endswith("num_batches_tracked")}
    for k, v in state.items():
        if k.endswith("running_var"):
            v.uniform_(0.5, 1.5)
        elif k.endswith("running_mean"):
            v.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-random.pth"
    torch.save(state, path)
    return path, state


def test_inception_has_the_fid_networks_parameters():
    model = FIDInceptionV3()
    # torchvision's inception_v3 (aux_logits, 1000 classes) has 27,161,264 parameters;
    # minus its AuxLogits (3,326,696) and with a 1008-way fc (+8 * 2049) -> 23,850,960.
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    # 94 conv units (conv weight + 5 batch-norm tensors each) and the fc's 2 tensors
    assert len(model.state_dict()) == 94 * 6 + 2
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in model.state_dict()
    assert model.state_dict()["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)


def test_inception_weights_load_and_give_2048_features(inception_file):
    path, state = inception_file
    model = load_fid_inception(path)
    assert torch.equal(model.Mixed_6a.branch3x3.bn.running_var,
                       state["Mixed_6a.branch3x3.bn.running_var"])
    shapes = {}
    for name in ("Mixed_5d", "Mixed_6e", "Mixed_7c"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    extractor = make_feature_extractor(None, fid_weights=path)
    extractor.model = model
    assert isinstance(extractor, FeatureExtractor)
    assert "Inception" in extractor.label and "offline" not in extractor.label
    gray = load_image_dataset("digits", "val").images(range(1))
    feats = extractor(gray)
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()
    # every input is resized to 299x299: the standard feature map sizes
    assert shapes == {"Mixed_5d": (288, 35, 35), "Mixed_6e": (768, 17, 17),
                      "Mixed_7c": (2048, 8, 8)}
    # gray images are the same picture in three channels
    assert torch.allclose(extractor(gray.expand(-1, 3, -1, -1)), feats)
    with pytest.raises(ValueError, match="images: the Inception network takes 1 or 3 channels"):
        extractor(torch.rand(1, 2, 8, 8))


def test_inception_bad_weight_files(inception_file, tmp_path):
    path, state = inception_file
    with pytest.raises(ValueError, match="fid_weights: .* does not exist"):
        load_fid_inception(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth is not a readable PyTorch state dict"):
        load_fid_inception(tmp_path / "junk.pth")
    partial = dict(state)
    del partial["Mixed_7c.branch_pool.conv.weight"]
    partial["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"1 missing \(e.g. \['Mixed_7c.branch_pool.conv.weight'\]\)"
                                         r", 1 unexpected"):
        load_fid_inception(tmp_path / "partial.pth")
    wrong = dict(state)
    wrong["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"fc.weight has shape \(1000, 2048\), expected \(1008, 2048\)"):
        load_fid_inception(tmp_path / "wrong.pth")


# ------------------------------------------------------------------- offline default

def digits_subset(n):
    full = load_image_dataset("digits", "train")
    idx = list(range(n))
    return TensorImageDataset("digits", full.images(idx), full.attributes()[idx],
                              full.attribute_names, split="train", seed=0, hflip=False,
                              class_names=full.class_names)


@pytest.fixture(scope="module")
def digits_extractor(tmp_path_factory):
    """The offline extractor of the first 320 training digits (a small set keeps its
    training short: 10 epochs = 50 steps), trained once into a fresh cache."""
    cache = tmp_path_factory.mktemp("fid_cache")
    rng_state = torch.get_rng_state()
    ex = make_feature_extractor(digits_subset(320), cache_dir=cache)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's RNG is untouched
    return ex, cache


def test_offline_extractor_label_cache_and_features(digits_extractor):
    first, cache = digits_extractor
    assert "offline" in first.label and "not Inception" in first.label
    assert "digits" in first.label and "320 images" in first.label
    assert first.info["cache"] == "miss" and first.info["steps"] == 10 * 320 // 64
    files = list((cache / "fid").iterdir())
    assert len(files) == 1 and files[0].name.startswith("classifier_digits_320_")
    val = load_image_dataset("digits", "val").images()
    feats = first(val)
    assert feats.shape == (300, 128) and feats.dtype == torch.float32
    again = make_feature_extractor(digits_subset(320), cache_dir=cache)
    assert again.info["cache"] == "hit" and torch.equal(again(val), feats)
    # the features tell digits from degraded digits: FID between two halves of the
    # validation set is well below FID between the set and noisy or blurred copies
    noisy = (val + 0.3 * torch.randn(val.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(val, 3, 1, 1)
    halves = fid(first, val[::2], val[1::2])
    assert fid(first, val, val) == pytest.approx(0.0, abs=1e-6)
    assert fid(first, val, noisy) > 5 * halves
    assert fid(first, val, blurred) > 2 * halves


def test_offline_extractor_deterministic_keyed_and_self_healing(tmp_path):
    tiny = digits_subset(64)  # 10 steps
    val = load_image_dataset("digits", "val").images(range(40))
    a = make_feature_extractor(tiny, cache_dir=tmp_path / "a")
    b = make_feature_extractor(tiny, cache_dir=tmp_path / "b")
    assert a.info["cache"] == b.info["cache"] == "miss"
    assert torch.equal(a(val), b(val))  # trained twice, the same weights
    # a corrupt cache file is trained over
    path = next((tmp_path / "a" / "fid").iterdir())
    path.write_bytes(b"garbage")
    healed = make_feature_extractor(tiny, cache_dir=tmp_path / "a")
    assert healed.info["cache"] == "miss" and torch.equal(healed(val), a(val))
    # different images -> a different cache entry
    flipped = TensorImageDataset("digits", tiny.images().flip(-1), tiny.attributes(),
                                 tiny.attribute_names, split="train", seed=0, hflip=False,
                                 class_names=tiny.class_names)
    assert make_feature_extractor(flipped, cache_dir=tmp_path / "a").info["cache"] == "miss"
    assert len(list((tmp_path / "a" / "fid").glob("*.pt"))) == 2


def test_offline_extractor_multilabel_celeba(tmp_path):
    write_celeba(tmp_path / "celeba")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = load_image_dataset(tmp_path / "celeba", "train")
        val = load_image_dataset(tmp_path / "celeba", "val")
    ex = make_feature_extractor(train, cache_dir=tmp_path / "cache")
    assert "40 attributes" in ex.label and ex.info["multilabel"]
    assert ex(val.images()).shape == (2, 128)


def test_make_feature_extractor_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="train_dataset: expected a vsc.datasets.ImageDataset"):
        make_feature_extractor(torch.zeros(3, 1, 28, 28), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="train_dataset: the offline classifier trains on the "
                                         "training split"):
        make_feature_extractor(load_image_dataset("digits", "val"), cache_dir=tmp_path)


# ------------------------------------------------------------------------- fid()

class MeanPixels:
    """A transparent extractor: per-row means of 4 pixel blocks."""
    label = "FID (test features)"

    def __call__(self, images):
        return images.flatten(1).reshape(images.shape[0], 4, -1).mean(-1)


def test_fid_batches_and_iterables_agree():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(50, 1, 4, 4, generator=g)
    fake = torch.rand(40, 1, 4, 4, generator=g) ** 2
    ex = MeanPixels()
    want = frechet_distance(ex(real), ex(fake))
    assert fid(ex, real, fake) == pytest.approx(want, rel=1e-12)
    assert fid(ex, real, fake, batch_size=7) == pytest.approx(want, rel=1e-12)
    assert fid(ex, [real[:20], real[20:]], iter([fake])) == pytest.approx(want, rel=1e-12)


def test_fid_nan_and_bad_inputs():
    real = torch.rand(10, 1, 4, 4)
    fake = real.clone()
    fake[3, 0, 1, 1] = float("nan")
    assert math.isnan(fid(MeanPixels(), real, fake))
    with pytest.raises(ValueError, match="^extractor"):
        fid(lambda x: x.flatten(1), real, real)
    with pytest.raises(ValueError, match="^batch_size"):
        fid(MeanPixels(), real, real, batch_size=0)
    with pytest.raises(ValueError, match="^fake_images: expected a"):
        fid(MeanPixels(), real, real[0])
    with pytest.raises(ValueError, match="^real_images: holds no images"):
        fid(MeanPixels(), [], real)
    with pytest.raises(ValueError, match="^real_images: expected a .* got int"):
        fid(MeanPixels(), 3, real)
