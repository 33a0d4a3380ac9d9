"""Training images: the embedded MNIST sample, MNIST IDX files, image folders, emoji-datasource
packages, labelled ``.npz`` files, synthetic.

Every source loads into one uint8 array ``[N, C, H, W]`` held in memory (MNIST is
47 MB, the 64x64 emoji set 46 MB); ``Batches`` turns it into seeded, resumable
mini-batches in [-1, 1] (in ``train``). Needs numpy and Pillow, not torch.

Some sources also know each image's class, which images are near-duplicates of each other
(a *group*: an emoji's skin-tone variants) and which are held out of training (``Dataset``);
evaluation uses them to split without leaking near-duplicates across the split.
"""
from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IDX_NAMES = ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "train-images.idx3-ubyte")


class DataError(ValueError):
    """A data source that cannot be used; the message says why."""


def mnist_sample_path() -> Path:
    """The embedded 5,000-digit MNIST sample (``training/data/mnist_5k.npz``)."""
    try:
        from . import training_data  # installed as a subpackage (see pyproject's package-dir)
        return Path(training_data.__file__).parent / "mnist_5k.npz"
    except ImportError:
        return Path(__file__).resolve().parent.parent / "training" / "data" / "mnist_5k.npz"


@dataclass
class Dataset:
    """Images and what a source knows about them."""

    images: np.ndarray                   # uint8 [N, C, H, W]
    labels: np.ndarray | None = None     # int64 [N]: index into ``classes``
    classes: tuple[str, ...] = ()
    groups: np.ndarray | None = None     # int64 [N]: near-duplicates (an emoji's skin-tone variants) share one
    heldout: np.ndarray | None = None    # bool [N]: kept out of training (for the memorisation check)

    def subset(self, index: np.ndarray) -> "Dataset":
        pick = (lambda a: None if a is None else a[index])
        return Dataset(self.images[index], pick(self.labels), self.classes, pick(self.groups), pick(self.heldout))

    @property
    def training(self) -> "Dataset":
        """The images a generator trains on: all but the held-out ones."""
        return self if self.heldout is None else self.subset(np.flatnonzero(~self.heldout))


def load(source: str, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """A data source -> the uint8 training images ``[N, channels, size, size]`` (held-out images excluded).

    ``source``: ``mnist-sample`` (embedded; ``mnist-sample:heldout`` keeps 500 of them out of training),
    ``synthetic`` or ``synthetic:N``, a ``.npz`` with
    ``images``, a folder with MNIST IDX files, an emoji-datasource package folder (with
    ``emoji.json``), or any folder of images.
    """
    return load_dataset(source, channels, size, seed).training.images


def load_dataset(source: str, channels: int, size: int, seed: int = 0) -> Dataset:
    """A data source -> ``Dataset`` (labels, groups and the held-out mask where the source has them)."""
    if not isinstance(source, str) or not source:
        raise DataError(f"data must be a data source name or path, got {source!r}")
    if source in ("mnist-sample", MNIST_HELDOUT):
        with np.load(mnist_sample_path()) as f:
            labels = f["labels"].astype(np.int64)
            return Dataset(fit(f["images"], channels, size), labels, tuple(str(d) for d in range(10)),
                           heldout=mnist_heldout(labels) if source == MNIST_HELDOUT else None)
    if source.startswith("synthetic"):
        _, _, count = source.partition(":")
        count, _, kinds = count.partition(":")
        if count and not count.isdigit() or count and not 1 <= int(count) <= MAX_SYNTHETIC:
            raise DataError(f"data {source!r}: synthetic:N takes a whole number N from 1 to {MAX_SYNTHETIC}")
        if kinds and (not kinds.isdigit() or not 2 <= int(kinds) <= 26):
            raise DataError(f"data {source!r}: synthetic:N:K takes a number of classes K from 2 to 26")
        images = synthetic(int(count) if count else 512, channels, size, seed)
        if not kinds:
            return Dataset(images)
        # labelled in turn, class k's discs scaled by (k + 2) / (K + 1): a label a conditional model can learn
        k = int(kinds)
        labels = np.arange(len(images), dtype=np.int64) % k
        images = (images.astype(np.float32) * ((labels + 2) / (k + 1))[:, None, None, None]).astype(np.uint8)
        return Dataset(images, labels, tuple(chr(ord("a") + i) for i in range(k)))
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source not found: {source} "
                        "(use mnist-sample, mnist-sample:heldout, synthetic, or a folder/file)")
    if path.is_file() and path.suffix == ".npz":
        return read_npz(path, channels, size)
    if path.is_file() and "idx3" in path.name:
        return Dataset(fit(read_idx(path), channels, size))
    if path.is_dir():
        for name in IDX_NAMES:
            if (path / name).is_file():
                return Dataset(fit(read_idx(path / name), channels, size))
        if (path / "emoji.json").is_file():
            return read_emoji_package(path, channels, size)
        return read_folder(path, channels, size)
    raise DataError(f"{path}: not a data source (expected a folder of images, MNIST IDX files or a .npz)")


MAX_SYNTHETIC = 100_000
MNIST_HELDOUT = "mnist-sample:heldout"
HELDOUT_PER_CLASS = 50


def mnist_heldout(labels: np.ndarray) -> np.ndarray:
    """``mnist-sample:heldout``: the embedded sample with 50 images of each digit (500 in all, the same ones
    everywhere: a fixed permutation) kept out of training, for the memorisation check."""
    held = np.zeros(len(labels), bool)
    order = np.random.default_rng(20261207).permutation(len(labels))
    for k in np.unique(labels):
        held[order[labels[order] == k][:HELDOUT_PER_CLASS]] = True
    return held


def read_npz(path: Path, channels: int, size: int) -> Dataset:
    """A ``.npz`` with ``images`` (uint8 ``[N, H, W]`` or ``[N, C, H, W]``) and optionally ``labels``,
    ``classes``, ``groups`` and ``heldout`` (as ``training/emoji/prepare.py`` writes them)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f:
                raise DataError(f"{path}: a .npz data file needs an 'images' array")
            arrays = {k: f[k] for k in ("images", "labels", "classes", "groups", "heldout") if k in f}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    images = fit(arrays["images"], channels, size)
    n = len(images)
    for key in ("labels", "groups", "heldout"):
        if key in arrays and arrays[key].shape != (n,):
            raise DataError(f"{path}: '{key}' has shape {list(arrays[key].shape)}, expected [{n}] (one per image)")
    classes = tuple(str(c) for c in arrays.get("classes", np.array([], str)))
    labels = arrays["labels"].astype(np.int64) if "labels" in arrays else None
    if labels is not None and len(labels) and (labels.min() < 0 or (classes and labels.max() >= len(classes))):
        raise DataError(f"{path}: 'labels' must index 'classes' (0 to {len(classes) - 1})")
    return Dataset(images, labels, classes, arrays["groups"].astype(np.int64) if "groups" in arrays else None,
                   arrays["heldout"].astype(bool) if "heldout" in arrays else None)


def read_emoji_package(folder: Path, channels: int, size: int) -> Dataset:
    """An emoji-datasource package (``emoji.json`` + ``img/<set>/64/``, as ``npm pack`` unpacks
    ``emoji-datasource-twitter``, ``-apple``, ``-facebook`` or ``-google``): every image of the set with
    its ``category`` as the label; an emoji and its skin-tone variants form one group."""
    sets = sorted(p.parent.name for p in folder.glob("img/*/64") if p.is_dir())
    if len(sets) != 1:
        raise DataError(f"{folder}: an emoji-datasource package needs exactly one img/<set>/64 folder, found "
                        f"{sets or 'none'}")
    name = sets[0]
    try:
        entries = json.loads((folder / "emoji.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{folder / 'emoji.json'}: not readable JSON ({e})") from None
    files, categories, groups = [], [], []
    for group, e in enumerate(entries):
        if not isinstance(e, dict) or "image" not in e or "category" not in e:
            raise DataError(f"{folder / 'emoji.json'}: entry {group} lacks 'image' or 'category'")
        variants = [e, *(e.get("skin_variations") or {}).values()]
        for v in variants:
            if v.get(f"has_img_{name}") and (folder / "img" / name / "64" / v["image"]).is_file():
                files.append(folder / "img" / name / "64" / v["image"])
                categories.append(e["category"])
                groups.append(group)
    if not files:
        raise DataError(f"{folder}: no images of the {name} set found under img/{name}/64")
    classes = tuple(dict.fromkeys(categories))  # in emoji.json's order
    images = []
    for p in files:
        try:
            images.append(read_image(p, channels, size))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as e:
            raise DataError(f"{p}: not a readable image ({e})") from None
    return Dataset(np.stack(images), np.array([classes.index(c) for c in categories], np.int64), classes,
                   np.array(groups, np.int64))


def read_idx(path: Path) -> np.ndarray:
    """MNIST IDX image file (optionally .gz) -> uint8 ``[N, 28, 28]``."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 16 or raw[:4] != b"\x00\x00\x08\x03":
        raise DataError(f"{path}: not an MNIST IDX image file (bad magic number)")
    n, h, w = (int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
    if len(raw) != 16 + n * h * w:
        raise DataError(f"{path}: truncated IDX file ({len(raw) - 16} pixel bytes, header says {n * h * w})")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def read_folder(folder: Path, channels: int, size: int) -> Dataset:
    """Every image under ``folder`` (recursively), resized and centre-cropped to ``size``.

    Transparent images are composited on white. Unreadable files -- decompression bombs
    (more than ``MAX_IMAGE_PIXELS``) among them -- are skipped and counted in one warning; a
    folder without a readable image is an error. Labelled by class subfolders, the ImageFolder
    convention: when every image lies in a subfolder of ``folder`` and there are two or more, each
    image's class is its subfolder's name (classes in sorted order).
    """
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    images, bad = [], []
    for p in files:
        try:
            images.append(read_image(p, channels, size))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            bad.append(p)
    if bad:
        log.warning("skipped %d unreadable image file(s) of %d in %s (first: %s)", len(bad), len(files), folder, bad[0])
    if not images:
        raise DataError(f"{folder}: none of the {len(files)} image files could be read")
    read = [p for p in files if p not in set(bad)]
    tops = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else None for p in read]
    if None in tops or len(set(tops)) < 2:
        return Dataset(np.stack(images))
    classes = tuple(sorted(set(tops)))
    return Dataset(np.stack(images), np.array([classes.index(t) for t in tops], np.int64), classes)


MAX_IMAGE_PIXELS = 50_000_000  # a training image larger than this is refused (Pillow's own limit is 89 M)


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """One image file -> uint8 ``[channels, size, size]``; a decompression bomb raises before it is decoded."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{path}: {im.width}x{im.height} pixels")
            return square(im, channels, size)


def resized_side(width: int, height: int, size: int) -> tuple[int, int]:
    """The (width, height) an image is scaled to before its centre crop: the shorter side to ``size``; a
    ``ValueError`` when that is more than ``MAX_IMAGE_PIXELS`` (a 1 x 20,000,000 strip would need ~16 GB)."""
    scale = size / max(1, min(width, height))
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"a {width}x{height} image would be {w}x{h} pixels with its shorter side at {size}; "
                         f"at most {MAX_IMAGE_PIXELS:,} (crop it to a less extreme shape)")
    return w, h


def square(im: Image.Image, channels: int, size: int) -> np.ndarray:
    """A Pillow image -> uint8 ``[channels, size, size]``: shorter side to ``size``, centre crop. 16-bit
    greyscale is scaled to 8 bits (65535 -> 255), not clipped."""
    w, h = resized_side(im.width, im.height, size)
    if im.mode == "I":
        low, high = im.getextrema()
    if im.mode.startswith("I;16") or (im.mode == "I" and 0 <= low and high <= 65535):
        im = Image.fromarray(np.rint(np.asarray(im, np.float64) / 257).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    im = im.convert("L" if channels == 1 else "RGB")
    im = im.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def fit(images: np.ndarray, channels: int, size: int) -> np.ndarray:
    """uint8 ``[N, H, W]`` or ``[N, C, H, W]`` -> ``[N, channels, size, size]`` (resizing if needed)."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(f"expected uint8 images [N, H, W] or [N, C, H, W], got {images.dtype} {list(images.shape)}")
    if images.shape[1] == channels and images.shape[2:] == (size, size):
        return images
    mode_in = {1: "L", 3: "RGB"}.get(images.shape[1])
    if mode_in is None:
        raise DataError(f"images with {images.shape[1]} channels are not supported")
    return np.stack([square(Image.fromarray(im[0] if mode_in == "L" else im.transpose(1, 2, 0)), channels, size)
                     for im in images])


def synthetic(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded images of bright discs on a dark background: for smoke tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size * 0.3, size * 0.7, (2, n, 1, 1))
    r = rng.uniform(size * 0.15, size * 0.35, (n, 1, 1))
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2).astype(np.float32)
    colour = rng.uniform(0.5, 1.0, (n, channels, 1, 1))
    return (disc[:, None] * colour * 255).astype(np.uint8)
