"""Writers of small data files in the real formats (Fashion-MNIST's IDX files, CelebA's
folder layout) for the tests of vsc.datasets and vsc.fid."""

import gzip
import struct

import numpy as np
from PIL import Image


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def write_fmnist(folder, n_train=12, n_val=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for stem, arr, magic in ((f"{prefix}-images-idx3-ubyte", images, 0x803),
                                 (f"{prefix}-labels-idx1-ubyte", labels, 0x801)):
            raw = idx_bytes(arr, magic)
            if gz:
                with gzip.open(folder / f"{stem}.gz", "wb") as f:
                    f.write(raw)
            else:
                (folder / stem).write_bytes(raw)
        data[prefix] = (images, labels)
    return data


CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young").split()
#: partitions of the 8 images 000001.jpg .. 000008.jpg
CELEBA_PARTS = [0, 0, 1, 0, 2, 0, 1, 0]


def write_celeba(folder, seed=0):
    """A tiny CelebA: 8 JPEGs of CelebA's size (178x218) and the two text files, formatted
    as the official ones (double spaces before positive values)."""
    rng = np.random.default_rng(seed)
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    names = [f"{k:06d}.jpg" for k in range(1, 9)]
    yy, xx = np.mgrid[0:218, 0:178]
    for k, n in enumerate(names):
        # smooth content (JPEG keeps it well) plus an asymmetric marker so flips show
        img = np.stack([(xx * (k + 1)) % 256, (yy * 2 + 30 * k) % 256, (xx + yy) % 256], -1)
        img[60:90, 40:60] = 255
        Image.fromarray(img.astype(np.uint8)).save(folder / "img_align_celeba" / n, quality=95)
    values = rng.choice([-1, 1], size=(8, 40))
    lines = ["8", " ".join(CELEBA_ATTRS) + " "]
    for n, row in zip(names, values):
        lines.append(n + "".join(f" {v:2d}" for v in row))
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, CELEBA_PARTS)))
    return names, (values + 1) // 2
