"""Image conversion, grids and writers (numpy + Pillow).

All writers are atomic (see ``files.py``): an interrupted run leaves no half-written
file under the final name.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_path, check_writable_dir, sync_folder

# A PNG grid bigger than this is refused: it would be slow to write and useless to view.
MAX_GRID_PIXELS = 64 * 1024 * 1024


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images ``[n, C, H, W]`` in [-1, 1] -> uint8 ``[n, H, W, C]`` via ``(x+1)*127.5``."""
    x = np.rint((np.asarray(images, np.float32) + 1.0) * 127.5)
    return np.clip(x, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def grid_shape(n: int, nrow: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``n`` images."""
    cols = nrow or math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def check_grid_size(n: int, height: int, width: int, pad: int = 2) -> None:
    """Raise ValueError when a grid of ``n`` images would be unreasonably large."""
    rows, cols = grid_shape(n)
    pixels = (rows * (height + pad) + pad) * (cols * (width + pad) + pad)
    if pixels > MAX_GRID_PIXELS:
        raise ValueError(
            f"a grid of {n} images of {height}x{width} would be {pixels / 1e6:.0f} megapixels "
            f"(limit {MAX_GRID_PIXELS / 1e6:.0f}); write a .npy file or a directory instead")


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """uint8 ``[n, H, W, C]`` -> one uint8 ``[rows*(H+pad)+pad, cols*(W+pad)+pad, C]`` image."""
    n, h, w, c = images.shape
    rows, cols = grid_shape(n, nrow)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[y:y + h, x:x + w] = img
    return out


def to_pil(image: np.ndarray) -> Image.Image:
    """uint8 ``[H, W, C]`` with C in (1, 3) -> a Pillow image."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_png(image: np.ndarray, dest: str | os.PathLike, durable: bool = True) -> None:
    """Atomically write one uint8 ``[H, W, C]`` image as PNG (``durable``: see ``atomic_path``)."""
    with atomic_path(dest, durable) as tmp:
        to_pil(image).save(tmp, format="PNG")


def save_gif(frames: np.ndarray, dest: str | os.PathLike, duration_ms: int = 80, scale: int = 1) -> None:
    """Atomically write uint8 ``[k, H, W, C]`` frames as a looping animated GIF."""
    pics = [to_pil(f) for f in frames]
    if scale > 1:
        pics = [p.resize((p.width * scale, p.height * scale), Image.NEAREST) for p in pics]
    with atomic_path(dest) as tmp:
        pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:], duration=duration_ms, loop=0)


def write_npy(chunks: Iterable[np.ndarray], dest: str | os.PathLike, shape: tuple[int, ...]) -> None:
    """Stream uint8 chunks ``[k, H, W, C]`` into a ``.npy`` of ``shape``, chunk by chunk.

    The header is written first and each chunk appended as it comes, so memory stays
    bounded by one chunk however large ``shape[0]`` is (a memory map would keep the
    written pages resident). The file appears under ``dest`` only once every row is in.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            rows = 0
            for chunk in chunks:
                if chunk.shape[1:] != shape[1:] or chunk.dtype != np.uint8:
                    raise RuntimeError(f"chunk of {chunk.dtype} {list(chunk.shape)} does not fit {list(shape)}")
                f.write(np.ascontiguousarray(chunk).tobytes())
                rows += len(chunk)
        if rows != shape[0]:
            raise RuntimeError(f"expected {shape[0]} images, got {rows}")


def write_pngs(chunks: Iterable[np.ndarray], folder: str | os.PathLike, total: int, prefix: str = "") -> int:
    """One PNG per image, zero-padded names (``000000.png`` ...) in ``folder`` (created).

    Each file appears whole or not at all (temp file + rename); the folder is synced to disk
    once at the end rather than per file, which would cost most of the time for 10^5 small
    PNGs. Returns the number written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    check_writable_dir(folder)
    digits = max(6, len(str(total - 1)))
    i = 0
    for chunk in chunks:
        for img in chunk:
            save_png(img, folder / f"{prefix}{i:0{digits}d}.png", durable=False)
            i += 1
    sync_folder(folder)
    return i
