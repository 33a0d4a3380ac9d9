"""Seeded latents and interpolation (numpy only).

A seed means the same latent everywhere: latents are drawn on the CPU with
``numpy.random.default_rng(seed)``, float32, row by row, so the first k rows of
``latents(n, seed)`` equal ``latents(k, seed)`` whatever backend runs the model.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

PRIORS = ("normal", "uniform")


def check_count(n, what: str = "n") -> int:
    """An integer count >= 1, or a ValueError that says what was wrong."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"{what} must be at least 1, got {n}")
    return int(n)


def check_seed(seed) -> int:
    """A non-negative integer seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)


def random_seed() -> int:
    """A fresh seed from the OS, reported to the user so the result can be reproduced."""
    return int(np.random.SeedSequence().entropy % (2**32))


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


def latents(n: int, seed: int, latent_dim: int, prior: str = "normal") -> np.ndarray:
    """``n`` latents for ``seed``: float32 ``[n, latent_dim]``."""
    return LatentStream(seed, latent_dim, prior).take(check_count(n))


def iter_latents(n: int, seed: int, latent_dim: int, prior: str = "normal",
                 chunk: int = 256) -> Iterator[np.ndarray]:
    """The rows of ``latents(n, seed, ...)`` in chunks of at most ``chunk`` rows."""
    n, chunk = check_count(n), check_count(chunk, "batch_size")
    stream = LatentStream(seed, latent_dim, prior)
    for start in range(0, n, chunk):
        yield stream.take(min(chunk, n - start))


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
