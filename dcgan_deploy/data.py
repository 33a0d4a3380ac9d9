"""Training images: the embedded MNIST sample, MNIST IDX files, image folders, synthetic.

Every source loads into one uint8 array ``[N, C, H, W]`` held in memory (MNIST is
47 MB, the 64x64 emoji set 46 MB); ``Batches`` turns it into seeded, resumable
mini-batches in [-1, 1]. Needs numpy and Pillow; torch only for ``Batches``.
"""
from __future__ import annotations

import gzip
import logging
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


def load(source: str, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """A data source -> uint8 ``[N, channels, size, size]``.

    ``source``: ``mnist-sample`` (embedded), ``synthetic`` or ``synthetic:N``, a
    ``.npz`` with ``images``, a folder with MNIST IDX files, or any folder of images.
    """
    if source == "mnist-sample":
        return fit(np.load(mnist_sample_path())["images"], channels, size)
    if source.startswith("synthetic"):
        _, _, count = source.partition(":")
        return synthetic(int(count) if count else 512, channels, size, seed)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source not found: {source} (use mnist-sample, synthetic, or a folder/file)")
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as f:
            if "images" not in f:
                raise DataError(f"{path}: a .npz data file needs an 'images' array")
            return fit(f["images"], channels, size)
    if path.is_file() and "idx3" in path.name:
        return fit(read_idx(path), channels, size)
    if path.is_dir():
        for name in IDX_NAMES:
            if (path / name).is_file():
                return fit(read_idx(path / name), channels, size)
        return read_folder(path, channels, size)
    raise DataError(f"{path}: not a data source (expected a folder of images, MNIST IDX files or a .npz)")


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


def read_folder(folder: Path, channels: int, size: int) -> np.ndarray:
    """Every image under ``folder`` (recursively), resized and centre-cropped to ``size``.

    Transparent images are composited on white. Unreadable files are skipped and
    counted in one warning; a folder without a readable image is an error.
    """
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    images, bad = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                images.append(square(im, channels, size))
        except (UnidentifiedImageError, OSError, ValueError):
            bad.append(p)
    if bad:
        log.warning("skipped %d unreadable image file(s) of %d in %s (first: %s)", len(bad), len(files), folder, bad[0])
    if not images:
        raise DataError(f"{folder}: none of the {len(files)} image files could be read")
    return np.stack(images)


def square(im: Image.Image, channels: int, size: int) -> np.ndarray:
    """A Pillow image -> uint8 ``[channels, size, size]``: shorter side to ``size``, centre crop."""
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    im = im.convert("L" if channels == 1 else "RGB")
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
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


class Batches:
    """Seeded mini-batches in [-1, 1], sampled without replacement epoch by epoch.

    ``state_dict`` / ``load_state_dict`` make the sequence resumable exactly.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int):
        import torch
        if len(images) < batch_size:
            raise DataError(f"the data has {len(images)} images, fewer than one batch of {batch_size}")
        self.images = torch.from_numpy(images)
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(images), generator=self.gen)
        self.pos = 0

    def next(self, rank: int = 0, world: int = 1):
        """The next global batch of ``batch_size * world`` images; this rank's slice, float ``[B, C, H, W]``."""
        import torch
        need = self.batch_size * world
        if need > len(self.images):
            raise DataError(f"the data has {len(self.images)} images, fewer than one global batch of {need}")
        if self.pos + need > len(self.perm):
            self.perm = torch.randperm(len(self.images), generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + need][rank * self.batch_size:(rank + 1) * self.batch_size]
        self.pos += need
        return self.images[idx].float() / 127.5 - 1.0

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])
