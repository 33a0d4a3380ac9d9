"""Image conversion, grids and writers (numpy; Pillow, imported when a PNG or GIF is encoded).

All writers are atomic (see ``files.py``): an interrupted run leaves no half-written
file under the final name.
"""
from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .files import atomic_folder, atomic_path, atomic_paths, check_folder_target, check_writable_dir, sync_folder

# A PNG grid bigger than this is refused: it would be slow to write and useless to view.
MAX_GRID_PIXELS = 64 * 1024 * 1024


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images ``[n, C, H, W]`` in [-1, 1] -> uint8 ``[n, H, W, C]`` via ``(x+1)*127.5``."""
    x = np.rint((np.asarray(images, np.float32) + 1.0) * 127.5)
    return np.clip(x, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def compare_images(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Image-space errors between two float image batches in [-1, 1]: max and mean abs error, PSNR (over the
    peak-to-peak 2), the share of uint8 pixels that change, and whether the candidate is finite."""
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    mse = max(float(np.mean(diff ** 2)), 1e-20)  # identical images report ~206 dB, not Infinity (not JSON)
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "psnr": 10 * math.log10(4.0 / mse),
        "changed": float(np.mean(to_uint8(reference) != to_uint8(candidate))),
        "finite": bool(np.isfinite(candidate).all()),
    }


def grid_shape(n: int, nrow: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``n`` images."""
    cols = nrow or math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def check_grid_size(n: int, height: int, width: int, pad: int = 2, shape: tuple[int, int] | None = None) -> None:
    """Raise ValueError when a grid of ``n`` images (``shape``: its rows and columns, else ``grid_shape``'s)
    would be unreasonably large."""
    rows, cols = shape or grid_shape(n)
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


def to_pil(image: np.ndarray):
    """uint8 ``[H, W, C]`` with C in (1, 3) -> a Pillow image."""
    from PIL import Image
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_png(image: np.ndarray, dest: str | os.PathLike, durable: bool = True) -> None:
    """Atomically write one uint8 ``[H, W, C]`` image as PNG (``durable``: see ``atomic_path``)."""
    with atomic_path(dest, durable) as tmp:
        to_pil(image).save(tmp, format="PNG")


def save_gif(frames: np.ndarray, dest: str | os.PathLike, duration_ms: int = 80, scale: int = 1) -> None:
    """Atomically write uint8 ``[k, H, W, C]`` frames as a looping animated GIF."""
    with atomic_path(dest) as tmp:
        encode_gif(frames, tmp, duration_ms, scale)


def encode_gif(frames: np.ndarray, path: Path, duration_ms: int, scale: int) -> None:
    """uint8 frames ``[n, H, W, C]`` -> an animated GIF at ``path``, each frame ``duration_ms`` long, enlarged
    ``scale`` times (nearest neighbour)."""
    pics = [to_pil(f) for f in frames]
    if scale > 1:
        pics = [p.resize((p.width * scale, p.height * scale), 0) for p in pics]  # 0: nearest neighbour
    pics[0].save(path, format="GIF", save_all=True, append_images=pics[1:], duration=duration_ms, loop=0)


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


def write_pngs(chunks: Iterable[np.ndarray], folder: str | os.PathLike, total: int, prefix: str = "",
               overwrite: bool = False) -> int:
    """One PNG per image, zero-padded names (``000000.png`` ...), in ``folder``.

    The images are written into a fresh folder beside ``folder`` that replaces it when all are in
    (``files.atomic_folder``): an interrupted run leaves ``folder`` as it was, and a non-empty
    ``folder`` is refused unless ``overwrite`` (then replaced whole). Each file is synced to disk
    once at the end rather than per file, which would cost most of the time for 10^5 small PNGs.
    Returns the number written."""
    digits = max(6, len(str(total - 1)))
    i = 0
    with atomic_folder(folder, overwrite) as stage:
        for chunk in chunks:
            for img in chunk:
                save_png(img, stage / f"{prefix}{i:0{digits}d}.png", durable=False)
                i += 1
        sync_folder(stage)
    return i


# ---- where generated images go ------------------------------------------------------------
def output_kind(out: str) -> str:
    """``grid`` (``*.png``: one grid), ``npy`` (``*.npy``: a uint8 array) or ``dir`` (a folder: a PNG each)."""
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        return "dir"
    suffix = Path(out).suffix.lower()
    if suffix == ".png":
        return "grid"
    if suffix == ".npy":
        return "npy"
    raise ValueError(f"cannot tell the output type of {out!r}: use *.png (grid), *.npy (array) "
                     "or a folder ending in '/' (one PNG per image)")


def check_output(out: str, count: int, shape: tuple[int, int, int], overwrite: bool = False) -> str:
    """Everything that can be known about writing ``count`` images of ``shape`` (H, W, C) to ``out``
    before generating them: its kind, a grid's size, the folder, the space a ``.npy`` needs. Returns the kind."""
    kind = output_kind(out)
    path = Path(out)
    if kind == "dir":
        check_folder_target(path, overwrite)
        return kind
    check_writable_dir(path.parent.resolve())
    if kind == "grid":
        check_grid_size(count, shape[0], shape[1])
    else:
        need = count * int(np.prod(shape)) + 128
        free = shutil.disk_usage(path.parent.resolve()).free
        if need > free:
            raise OSError(f"{out}: {count} images need {need / 1e9:.2f} GB, but only {free / 1e9:.2f} GB are free "
                          "there; ask for fewer (-n) or write elsewhere")
    return kind


def write_images(chunks: Iterable[np.ndarray], out: str, kind: str, count: int, shape: tuple[int, int, int],
                 overwrite: bool = False) -> None:
    """Write uint8 chunks ``[k, H, W, C]`` (``count`` images in all) as ``kind`` (see ``output_kind``)."""
    if kind == "grid":
        save_png(grid(np.concatenate(list(chunks))), out)
    elif kind == "npy":
        write_npy(chunks, out, (count, *shape))
    else:
        write_pngs(chunks, out, count, overwrite=overwrite)


def save_strip_and_gif(frames: np.ndarray, stem: str | os.PathLike, per_row: int, duration_ms: int = 80,
                       scale: int = 1) -> tuple[Path, Path]:
    """An interpolation's frames as ``STEM.png`` (a strip, ``per_row`` frames a row) and ``STEM.gif``
    (looping animation), replaced together only when both are complete. Returns both paths."""
    stem = Path(stem)
    strip, anim = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".gif")
    with atomic_paths([strip, anim]) as (tmp_png, tmp_gif):
        to_pil(grid(frames, nrow=per_row)).save(tmp_png, format="PNG")
        encode_gif(frames, tmp_gif, duration_ms, scale)
    return strip, anim
