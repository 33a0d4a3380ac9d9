"""Seeded latents, truncation and interpolation (numpy only).

A seed means the same latent everywhere: latents are drawn on the CPU with
``numpy.random.default_rng(seed)``, float32, row by row, so the first k rows of
``latents(n, seed)`` equal ``latents(k, seed)`` whatever backend runs the model.
Seeds are whole numbers from 0 to 2**64 - 1 (what the JavaScript runtime reproduces).

Truncation ``psi`` (0 < psi <= 1; 1 = off) scales every drawn latent by psi, in float32:
``z = float32(psi) * z`` -- towards the prior's mean 0, trading diversity for fidelity (the
"truncation trick"). One multiplication per value, so it keeps the prefix property and is
bit-exact in any language with IEEE float32 arithmetic.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import numpy as np

from .modelfile import PRIORS

MAX_SEED = 2**64 - 1
MAX_LATENT_ROWS = 10**6          # rows of a --latents file
MAX_LATENT_FILE = 4 * 1024**3    # bytes of a --latents file


def check_count(n, what: str = "n") -> int:
    """An integer count >= 1, or a ValueError that says what was wrong."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"{what} must be at least 1, got {n}")
    return int(n)


def check_seed(seed) -> int:
    """A whole-number seed from 0 to 2**64 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be a whole number from 0 to 2**64 - 1, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be from 0 to 2**64 - 1 (= {MAX_SEED}), got {seed}")
    return int(seed)


def check_truncation(psi) -> float:
    """A truncation psi with 0 < psi <= 1 (1 = off), whose float32 value -- the one ``truncate`` multiplies
    by -- is above 0 (1e-50 is not: every latent would become 0)."""
    if isinstance(psi, bool) or not isinstance(psi, (int, float, np.floating, np.integer)) \
            or not math.isfinite(psi) or not 0 < psi <= 1 or not np.float32(psi) > 0:
        raise ValueError(f"truncation must be a number with 0 < psi <= 1 (1 = off; as float32 above 0), got {psi!r}")
    return float(psi)


def truncate(z: np.ndarray, psi: float = 1.0) -> np.ndarray:
    """The truncation contract: ``float32(psi) * z`` (``z`` itself when psi = 1)."""
    psi = check_truncation(psi)
    return z if psi == 1.0 else (z * np.float32(psi)).astype(np.float32)


def random_seed() -> int:
    """A fresh seed from the OS, reported to the user so the result can be reproduced."""
    return int(np.random.SeedSequence().entropy % (2**32))


def seed_labels(n: int, seed: int, num_classes: int, start: int = 0) -> np.ndarray:
    """A conditional model's labels when none are given: int64 ``[n]``, the classes in turn from
    ``seed mod num_classes`` (``(seed + i) mod K`` for image ``i``): uniform over the classes, fixed by
    the seed, the first k of n equal to ``n = k``'s, and the same in every runtime. ``start``: the labels of
    images ``start`` to ``start + n - 1`` (a chunk of a longer run)."""
    first = (check_seed(seed) + start) % num_classes
    return (first + np.arange(check_count(n), dtype=np.int64)) % num_classes


def chosen_rows(latents_file, latent_dim: int, taken: dict) -> np.ndarray | None:
    """The one rule of the front ends for choosing latents: rows of a ``--latents`` file, which then stands
    alone (``taken``: the seed-side options and whether each was given), or ``None``: the caller draws them
    from a seed (``seed_or_random``), image ``index`` of its grid being ``Generator.latent(seed, index)``."""
    if latents_file is None:
        return None
    if any(taken.values()):
        names = list(taken)
        raise ValueError(f"--latents gives the latents: {', '.join(names[:-1])} and {names[-1]} do not apply to it"
                         if len(names) > 1 else f"--latents gives the latents: {names[0]} does not apply to it")
    return read_latents(latents_file, latent_dim)


def seed_or_random(seed) -> int:
    """``seed`` checked, or a fresh one when it is ``None``."""
    return random_seed() if seed is None else check_seed(seed)


class LatentStream:
    """Draws latent rows for one seed, a chunk at a time.

    Drawing in chunks gives exactly the rows one big draw would: numpy's
    ``standard_normal`` and ``uniform`` consume the bit stream element by element.
    """

    def __init__(self, seed: int, latent_dim: int, prior: str = "normal"):
        if prior not in PRIORS:
            raise ValueError(f"unknown latent prior {prior!r}; expected one of {PRIORS}")
        self.rng = np.random.default_rng(check_seed(seed))
        self.latent_dim = latent_dim
        self.prior = prior

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` latents, float32 ``[n, latent_dim]``."""
        shape = (n, self.latent_dim)
        if self.prior == "normal":
            return self.rng.standard_normal(shape, dtype=np.float32)
        return self.rng.uniform(-1.0, 1.0, shape).astype(np.float32)


def latents(n: int, seed: int, latent_dim: int, prior: str = "normal", truncation: float = 1.0) -> np.ndarray:
    """``n`` latents for ``seed``: float32 ``[n, latent_dim]``."""
    return truncate(LatentStream(seed, latent_dim, prior).take(check_count(n)), truncation)


def iter_latents(n: int, seed: int, latent_dim: int, prior: str = "normal", chunk: int = 256,
                 truncation: float = 1.0) -> Iterator[np.ndarray]:
    """The rows of ``latents(n, seed, ...)`` in chunks of at most ``chunk`` rows."""
    n, chunk = check_count(n), check_count(chunk, "batch_size")
    truncation = check_truncation(truncation)
    stream = LatentStream(seed, latent_dim, prior)
    for start in range(0, n, chunk):
        yield truncate(stream.take(min(chunk, n - start)), truncation)


def read_latents(path: str | os.PathLike, latent_dim: int | None = None) -> np.ndarray:
    """A ``.npy`` of float32 latents ``[n, latent_dim]`` (or one ``[latent_dim]``), checked before it is read
    whole: a plain ``.npy`` (not ``.npz``, no pickles), at least one row, at most ``MAX_LATENT_ROWS``."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_LATENT_FILE:
            raise ValueError(f"{size / 1e9:.1f} GB is more than a latents file can be")
        z = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only, until sliced
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"--latents {path}: not a readable .npy file ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(z, np.ndarray):
        raise ValueError(f"--latents {path}: an .npz archive; give one .npy array of latents")
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[0] < 1 or (latent_dim is not None and z.shape[1] != latent_dim):
        want = f"[n, {latent_dim}]" if latent_dim else "[n, latent_dim]"
        raise ValueError(f"--latents {path}: has shape {list(z.shape)}, expected {want} with n >= 1")
    if z.shape[0] > MAX_LATENT_ROWS:
        raise ValueError(f"--latents {path}: {z.shape[0]} rows; at most {MAX_LATENT_ROWS} per file")
    if z.dtype != np.float32:
        raise ValueError(f"--latents {path}: latents must be float32, are {z.dtype}")
    z = np.array(z, np.float32)
    if not np.isfinite(z).all():
        raise ValueError(f"--latents {path}: holds NaN or infinite values")
    return z


def lerp(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    """Linear interpolation; ``t`` scalar or ``[k]`` gives ``[D]`` or ``[k, D]``."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    t = np.asarray(t, np.float32)
    return ((1 - t)[..., None] * a + t[..., None] * b).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    """Spherical interpolation (keeps Gaussian latents at a typical norm).

    Falls back to lerp where the two latents are (anti)parallel and the great
    circle is undefined.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    t = np.asarray(t, np.float64)
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return lerp(a, b, t)
    s = np.sin(omega)
    out = (np.sin((1 - t) * omega) / s)[..., None] * a + (np.sin(t * omega) / s)[..., None] * b
    return out.astype(np.float32)


def path(points: Sequence[np.ndarray], frames_per_segment: int, method: str = "slerp") -> np.ndarray:
    """A path through several latents: ``[(len(points) - 1) * frames_per_segment + 1, D]``.

    Each segment contributes ``frames_per_segment`` frames; the last point closes the path.
    """
    if len(points) < 2:
        raise ValueError("an interpolation path needs at least two latents")
    frames_per_segment = check_count(frames_per_segment, "frames per segment")
    fn = {"slerp": slerp, "lerp": lerp}.get(method)
    if fn is None:
        raise ValueError(f"unknown interpolation {method!r}; expected 'slerp' or 'lerp'")
    t = np.arange(frames_per_segment) / frames_per_segment
    parts = [fn(a, b, t) for a, b in zip(points[:-1], points[1:])]
    parts.append(np.asarray(points[-1], np.float32)[None])
    return np.concatenate(parts).astype(np.float32)
