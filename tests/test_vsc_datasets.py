"""Tests of vsc.datasets: the embedded digits, Fashion-MNIST from IDX files, CelebA from its
folder layout (small files written here in the real formats), flips, and every bad-data case."""

import gzip
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from _image_files import CELEBA_ATTRS, CELEBA_PARTS, idx_bytes, write_celeba, write_fmnist
from vsc.datasets import ImageDataset, detect_dataset, flip_decision, load_image_dataset
from vsc.datasets.celeba import CELEBA_SPLIT_SIZES, decode_celeba_image
from vsc.datasets.digits import digits_split_indices
from vsc.datasets.fashion_mnist import FASHION_MNIST_CLASSES, read_idx


# --------------------------------------------------------------------------- philox flips

def test_flip_decision_is_lane0_top_bit_of_the_kernels_philox():
    from vsc_kernels._philox import philox4x32

    cases = [(0, 0, 0), (0, 0, 1), (1337, 3, 2**33 + 5), (-1, 2**40, 7), (747, 299, 149_999)]
    for seed, epoch, index in cases:
        s, i, e = seed & (2**64 - 1), index, epoch
        t = lambda v: torch.tensor([v], dtype=torch.int64)
        x0, _, _, _ = philox4x32(t(i & 0xFFFFFFFF), t(i >> 32), t(e & 0xFFFFFFFF), t(e >> 32),
                                 t(s & 0xFFFFFFFF), t(s >> 32))
        assert flip_decision(seed, epoch, index) == bool(int(x0) >> 31)


def test_flip_decision_is_balanced_and_varies_with_each_argument():
    flips = np.array([flip_decision(0, 0, i) for i in range(4000)])
    assert abs(flips.mean() - 0.5) < 0.04  # 5 sigma of Binomial(4000, 1/2) is 0.04
    other_epoch = np.array([flip_decision(0, 1, i) for i in range(4000)])
    other_seed = np.array([flip_decision(1, 0, i) for i in range(4000)])
    assert 0.4 < (flips != other_epoch).mean() < 0.6
    assert 0.4 < (flips != other_seed).mean() < 0.6


# --------------------------------------------------------------------------- digits

def test_digits_shapes_split_and_attributes():
    from sklearn.datasets import load_digits as sk

    bunch = sk()
    train = load_image_dataset("digits", "train", seed=0)
    val = load_image_dataset("digits", "val", seed=0)
    assert isinstance(train, ImageDataset) and train.name == "digits" == val.name
    assert (len(train), len(val)) == (1497, 300)
    assert train.image_shape == (1, 28, 28)
    assert train.attribute_names == [f"digit_{c}" for c in range(10)]
    assert val.attributes().sum(0).tolist() == [30.0] * 10
    tr_idx, va_idx = digits_split_indices(bunch.target)
    assert len(np.intersect1d(tr_idx, va_idx)) == 0 and len(tr_idx) + len(va_idx) == 1797
    # the attributes are the one-vs-rest indicators of sklearn's labels, in index order
    assert torch.equal(val.attributes().argmax(1), torch.as_tensor(bunch.target[va_idx]))
    assert torch.equal(train.attributes().sum(1), torch.ones(1497))
    x, y = val[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y.shape == (10,)
    all_x = train.images()
    assert all_x.min() >= 0 and all_x.max() <= 1 and all_x.max() == 1.0
    # MNIST layout: a 4-pixel empty border around the 20x20 digit box
    border = torch.ones(28, 28, dtype=torch.bool)
    border[4:24, 4:24] = False
    assert all_x[:, 0, border].abs().max() == 0


def test_digits_known_pixel_value():
    # val[0] is sklearn's digit 0 (position 0 of class 0 is in the split). Bilinear 8 -> 20
    # upsampling (align_corners=False) maps output pixel 7 to source coordinate
    # (7 + 0.5) / 2.5 - 0.5 = 2.5, so pixel (4 + 7, 4 + 7) is the mean of source rows/cols 2..3:
    # (15 + 2 + 12 + 0) / 4 / 16 = 0.453125.
    val = load_image_dataset("digits", "val")
    assert val.attributes()[0, 0] == 1
    assert val[0][0][0, 11, 11].item() == pytest.approx(0.453125, abs=1e-7)


def test_digits_split_fixed_for_all_seeds_and_no_flip_by_default():
    a = load_image_dataset("digits", "train", seed=0)
    b = load_image_dataset("digits", "train", seed=1337)
    assert torch.equal(a.images(), b.images())
    a.set_epoch(3)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(20))


def test_flips_are_train_only_deterministic_and_depend_on_seed_epoch_index():
    ds = load_image_dataset("digits", "train", seed=5, hflip=True)
    twin = load_image_dataset("digits", "train", seed=5, hflip=True)
    base = ds.images(range(200))
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        twin.set_epoch(epoch)
        out = torch.stack([ds[i][0] for i in range(200)])
        expected = [flip_decision(5, epoch, i) for i in range(200)]
        for i in range(200):
            want = base[i].flip(-1) if expected[i] else base[i]
            assert torch.equal(out[i], want)
        # same (seed, epoch, index) -> same images, in any visiting order
        assert all(torch.equal(twin[i][0], out[i]) for i in reversed(range(200)))
    assert 60 < sum(ds.is_flipped(i, 0) for i in range(200)) < 140
    assert any(ds.is_flipped(i, 0) != ds.is_flipped(i, 1) for i in range(200))
    with pytest.raises(ValueError, match="hflip"):
        load_image_dataset("digits", "val", hflip=True)
    val = load_image_dataset("digits", "val")
    val.set_epoch(4)
    assert not any(val.is_flipped(i) for i in range(len(val)))


def test_flips_survive_pickling_and_dataloader_workers():
    ds = load_image_dataset("digits", "train", seed=9, hflip=True)
    ds.set_epoch(2)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[7][0], ds[7][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2,
                                         sampler=list(range(128))[::-1])
    got = torch.cat([x for x, _ in loader])
    want = torch.stack([ds[i][0] for i in range(128)][::-1])
    assert torch.equal(got, want)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_image_dataset("digits", "test")
    with pytest.raises(ValueError, match="data"):
        load_image_dataset("mnist", "train")
    with pytest.raises(ValueError, match="data"):
        load_image_dataset(3, "train")
    with pytest.raises(ValueError, match="epoch"):
        load_image_dataset("digits", "train").set_epoch(-1)
    with pytest.raises(ValueError, match="options"):
        load_image_dataset("digits", "train", train_size=10)
    assert len(load_image_dataset("digits", "val", cache_dir="/nonexistent")) == 300  # ignored
    with pytest.raises(IndexError):
        load_image_dataset("digits", "val")[300]


def test_unknown_folder_and_file_path(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither Fashion-MNIST"):
        detect_dataset(tmp_path)
    with pytest.raises(ValueError, match="is a file"):
        detect_dataset(tmp_path / "notes.txt")


# --------------------------------------------------------------------------- Fashion-MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_known_values(tmp_path, gz):
    data = write_fmnist(tmp_path, gz=gz)
    assert detect_dataset(tmp_path) == ("fashion_mnist", tmp_path)
    train = load_image_dataset(tmp_path, "train", seed=0)
    val = load_image_dataset(str(tmp_path), "val", seed=0)
    assert train.name == "fashion_mnist" and train.image_shape == (1, 28, 28)
    assert (len(train), len(val)) == (12, 5)
    assert train.attribute_names == FASHION_MNIST_CLASSES and len(FASHION_MNIST_CLASSES) == 10
    images, labels = data["train"]
    for i in (0, 11):
        x, y = train[i]
        assert torch.equal(x, torch.from_numpy(images[i]).float()[None] / 255.0)
        assert y.argmax().item() == labels[i] and y.sum().item() == 1.0
    assert torch.equal(val.attributes().argmax(1), torch.from_numpy(data["t10k"][1]).long())
    assert not train.hflip


def test_fashion_mnist_torchvision_layout(tmp_path):
    write_fmnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    assert detect_dataset(tmp_path) == ("fashion_mnist", tmp_path / "FashionMNIST" / "raw")
    assert len(load_image_dataset(tmp_path, "val")) == 5


def test_fashion_mnist_missing_file(tmp_path):
    write_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    assert len(load_image_dataset(tmp_path, "train")) == 12
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: missing"):
        load_image_dataset(tmp_path, "val")


def test_fashion_mnist_wrong_magic(tmp_path):
    write_fmnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(p.read_bytes())
    raw[3] = 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: wrong IDX magic number"):
        load_image_dataset(tmp_path, "train")
    # labels given where images are expected
    write_fmnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        (tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: wrong IDX magic"):
        load_image_dataset(tmp_path, "train")


def test_fashion_mnist_count_mismatch(tmp_path):
    write_fmnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11, np.uint8), 0x801))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: 11 labels but "
                                         "train-images-idx3-ubyte has 12 images"):
        load_image_dataset(tmp_path, "train")


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_truncated(tmp_path, gz):
    write_fmnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    p = tmp_path / name
    raw = p.read_bytes()
    if gz:  # cut the gzip stream itself
        p.write_bytes(raw[: len(raw) // 2])
        match = f"{name}: the gzip stream is truncated"
    else:
        p.write_bytes(raw[:-100])
        match = f"{name}: truncated IDX file"
    with pytest.raises(ValueError, match=match):
        load_image_dataset(tmp_path, "train")


def test_fashion_mnist_truncated_inside_gzip_and_other_bad_bytes(tmp_path):
    write_fmnist(tmp_path)
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-1])  # a complete gzip of an incomplete IDX file
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: truncated IDX file"):
        load_image_dataset(tmp_path, "val")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: not a valid gzip"):
        load_image_dataset(tmp_path, "val")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte: IDX file has 1 bytes after"):
        load_image_dataset(tmp_path, "val")
    p.write_bytes(idx_bytes(np.zeros((5, 32, 32), np.uint8), 0x803))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte: images are 32x32"):
        load_image_dataset(tmp_path, "val")
    p.write_bytes(raw)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(5, 10, np.uint8), 0x801))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: label 10 outside 0..9"):
        load_image_dataset(tmp_path, "val")


def test_read_idx_short_header(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\0\0\x08")
    with pytest.raises(ValueError, match="no header"):
        read_idx(p, 0x803)
    p.write_bytes(struct.pack(">II", 0x803, 5))
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(p, 0x803)


# --------------------------------------------------------------------------- CelebA

def expected_celeba_image(path):
    with Image.open(path) as img:
        img = img.convert("RGB").crop((19, 39, 159, 179)).resize((64, 64), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0


def load_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_image_dataset(*args, **kwargs)


def test_celeba_known_values_and_split_membership(tmp_path):
    names, attrs = write_celeba(tmp_path)
    assert detect_dataset(tmp_path) == ("celeba", tmp_path)
    with pytest.warns(UserWarning, match="lists 5 images, fewer than the paper's 150000"):
        train = load_image_dataset(tmp_path, "train", seed=0)
    with pytest.warns(UserWarning, match="lists 2 images, fewer than the paper's 19000"):
        val = load_image_dataset(tmp_path, "val", seed=0)
    assert CELEBA_SPLIT_SIZES == {"train": 150_000, "val": 19_000}
    assert train.name == "celeba" and train.image_shape == (3, 64, 64)
    assert train.attribute_names == CELEBA_ATTRS
    train_idx = [i for i, p in enumerate(CELEBA_PARTS) if p == 0]
    val_idx = [i for i, p in enumerate(CELEBA_PARTS) if p == 1]
    assert train.image_names == [names[i] for i in train_idx]
    assert val.image_names == [names[i] for i in val_idx]
    assert torch.equal(train.attributes(), torch.from_numpy(attrs[train_idx]).float())
    assert torch.equal(val.attributes(), torch.from_numpy(attrs[val_idx]).float())
    for k, i in enumerate(val_idx):
        x, y = val[k]
        assert x.dtype == torch.float32 and x.shape == (3, 64, 64)
        assert torch.equal(x, expected_celeba_image(tmp_path / "img_align_celeba" / names[i]))
        assert torch.equal(y, torch.from_numpy(attrs[i]).float())
    # train flips (paper: training only), a pure function of (seed, epoch, index)
    assert train.hflip and not val.hflip
    for epoch in (0, 1, 2):
        train.set_epoch(epoch)
        for k, i in enumerate(train_idx):
            want = expected_celeba_image(tmp_path / "img_align_celeba" / names[i])
            if flip_decision(0, epoch, k):
                want = want.flip(-1)
            assert torch.equal(train[k][0], want)


def test_celeba_sizes_and_partitions(tmp_path):
    names, _ = write_celeba(tmp_path)
    three = load_image_dataset(tmp_path, "train", train_size=3)
    assert three.image_names == [names[0], names[1], names[3]]
    test_part = load_image_dataset(tmp_path, "val", val_size=1, val_partition=2)
    assert test_part.image_names == [names[4]]
    with pytest.raises(ValueError, match="train_size: 6 requested but partition 0"):
        load_image_dataset(tmp_path, "train", train_size=6)
    with pytest.raises(ValueError, match="val_size"):
        load_image_dataset(tmp_path, "val", val_size=0)
    with pytest.raises(ValueError, match="val_partition"):
        load_image_dataset(tmp_path, "val", val_partition=0)
    with pytest.raises(ValueError, match="options: unknown CelebA option"):
        load_image_dataset(tmp_path, "val", size=3)


def test_celeba_torchvision_layout(tmp_path):
    write_celeba(tmp_path / "celeba")
    assert detect_dataset(tmp_path) == ("celeba", tmp_path / "celeba")
    assert len(load_quiet(tmp_path, "val")) == 2


def test_celeba_cache_matches_decoding_and_workers(tmp_path):
    write_celeba(tmp_path / "data")
    plain = load_quiet(tmp_path / "data", "train", seed=3)
    cached = load_quiet(tmp_path / "data", "train", seed=3, cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").iterdir())
    assert [f.name for f in files] == [cached.cache_path.name]
    assert np.load(cached.cache_path).shape == (5, 3, 64, 64)
    mtime = cached.cache_path.stat().st_mtime_ns
    again = load_quiet(tmp_path / "data", "train", seed=3, cache_dir=tmp_path / "cache")
    assert again.cache_path == cached.cache_path and cached.cache_path.stat().st_mtime_ns == mtime
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(5):
            assert torch.equal(plain[i][0], cached[i][0])
    cached[0]  # opens the memmap; pickling must not carry it
    blob = pickle.dumps(cached)
    assert len(blob) < 20_000
    loader = torch.utils.data.DataLoader(cached, batch_size=2, num_workers=2)
    got = torch.cat([x for x, _ in loader])
    assert torch.equal(got, torch.stack([plain[i][0] for i in range(5)]))
    # a different subset is a different cache entry
    load_quiet(tmp_path / "data", "train", train_size=3, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_celeba_missing_files(tmp_path):
    write_celeba(tmp_path)
    (tmp_path / "list_attr_celeba.txt").rename(tmp_path / "attr.bak")
    with pytest.raises(ValueError, match="list_attr_celeba.txt: missing CelebA attribute file"):
        load_quiet(tmp_path, "train")
    (tmp_path / "attr.bak").rename(tmp_path / "list_attr_celeba.txt")
    (tmp_path / "list_eval_partition.txt").rename(tmp_path / "part.bak")
    with pytest.raises(ValueError, match="list_eval_partition.txt: missing CelebA partition"):
        load_quiet(tmp_path, "train")
    (tmp_path / "part.bak").rename(tmp_path / "list_eval_partition.txt")
    (tmp_path / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(ValueError, match=r"000004.jpg: missing image"):
        load_quiet(tmp_path, "train")
    assert len(load_quiet(tmp_path, "val")) == 2  # the other split does not need it
    (tmp_path / "img_align_celeba").rename(tmp_path / "imgs")
    with pytest.raises(ValueError, match="img_align_celeba: missing CelebA image folder"):
        load_quiet(tmp_path, "val")


def test_celeba_bad_text_files(tmp_path):
    write_celeba(tmp_path)
    attr = tmp_path / "list_attr_celeba.txt"
    good = attr.read_text().splitlines()
    attr.write_text("\n".join(good[:-1]) + "\n")  # drops 000008.jpg (train)
    with pytest.raises(ValueError, match="list_attr_celeba.txt: line 1 announces 8 images"):
        load_quiet(tmp_path, "train")
    attr.write_text("\n".join(["7"] + good[1:-1]) + "\n")
    with pytest.raises(ValueError, match="list_attr_celeba.txt: no attributes for image "
                                         "000008.jpg"):
        load_quiet(tmp_path, "train")
    attr.write_text("\n".join(good[:5] + [good[5].replace(" 1", " 0", 1)] + good[6:]) + "\n")
    with pytest.raises(ValueError, match="list_attr_celeba.txt: line 6 is not"):
        load_quiet(tmp_path, "train")
    attr.write_text("8\n")
    with pytest.raises(ValueError, match="list_attr_celeba.txt: truncated attribute file"):
        load_quiet(tmp_path, "train")
    attr.write_text("\n".join(good) + "\n")
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("000001.jpg 0\n000002.jpg train\n")
    with pytest.raises(ValueError, match="list_eval_partition.txt: line 2 is not"):
        load_quiet(tmp_path, "train")
    part.write_text("000001.jpg 0\n")
    with pytest.raises(ValueError, match="partition 1 \\(val\\) lists no images"):
        load_quiet(tmp_path, "val")


def test_celeba_unreadable_image_names_the_file(tmp_path):
    write_celeba(tmp_path)
    bad = tmp_path / "img_align_celeba" / "000003.jpg"  # val item 0
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    val = load_quiet(tmp_path, "val")
    assert val[1][0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match=r"000003.jpg: unreadable image"):
        val[0]
    raw = (tmp_path / "img_align_celeba" / "000007.jpg").read_bytes()
    bad.write_bytes(raw[: len(raw) // 3])  # a truncated JPEG
    with pytest.raises(ValueError, match=r"000003.jpg: unreadable image"):
        val[0]
    with pytest.raises(ValueError, match=r"000003.jpg: unreadable image"):
        load_quiet(tmp_path, "val", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # no partial cache left behind
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(bad)
    with pytest.raises(ValueError, match=r"000003.jpg: image is 120x100, smaller than"):
        decode_celeba_image(bad)
