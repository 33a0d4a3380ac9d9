"""Named latent directions and edits along them (numpy only): the ``Direction`` type, its versioned
``directions`` metadata entry, and moving a latent along a direction (``dcgan-deploy edit``, the demo).
Below the runtime, which reads a model's directions; computing them is ``directions``' work, above it."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .modelfile import MAX_DIRECTIONS

VERSION = 1
STEP = 3.0  # the step (in latent units) at which a labelled direction's ``raised`` share is taken


@dataclass
class Direction:
    """A unit vector in latent space, with what it is and how it was found."""

    name: str
    method: str                 # "sefa", "labelled" or "random"
    vector: np.ndarray          # float32 [latent_dim], unit norm
    value: float | None = None  # SeFa: the singular value; labelled: the boundary's held-out AUC
    share: float | None = None  # SeFa: the share of the spectrum's energy
    label: str | None = None    # labelled: the class it moves towards
    raised: float | None = None  # labelled: the share of fresh latents whose p(label) a step of STEP raises

    def to_json(self) -> dict:
        out = {"name": self.name, "method": self.method, "vector": [round(float(v), 7) for v in self.vector]}
        facts = {"sefa": (("singular_value", self.value), ("share", self.share)),
                 "labelled": (("auc", self.value), ("raised", self.raised))}.get(self.method, ())
        out.update({key: float(v) for key, v in facts if v is not None})  # a file may leave any of them out
        if self.method == "labelled":
            if self.label is not None:
                out["label"] = self.label
            if self.raised is not None:
                out["step"] = STEP
        return out


def random_directions(latent_dim: int, count: int = 4) -> list[Direction]:
    """Fixed random orthonormal directions (seed 0): the fallback for a model without directions."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((latent_dim, count)))
    return [Direction(f"random-{i + 1}", "random", q[:, i].astype(np.float32)) for i in range(count)]


def to_metadata(directions: list[Direction], source: str) -> str:
    return json.dumps({"version": VERSION, "source": source, "directions": [d.to_json() for d in directions]})


def from_metadata(entry: dict) -> list[Direction]:
    """Directions from a ``directions`` entry already checked by ``modelfile.check_directions``."""
    out = []
    for d in entry["directions"]:
        value = d.get("singular_value", d.get("auc"))
        out.append(Direction(d["name"], d["method"], np.asarray(d["vector"], np.float32), value, d.get("share"),
                             d.get("label"), d.get("raised")))
    return out


MAX_STRENGTH = 100.0
MAX_STEPS = 32


def check_strength(s) -> float:
    """An edit strength: a finite number within +-``MAX_STRENGTH`` (docs/DESIGN.md, "Input rules")."""
    ok = not isinstance(s, bool) and isinstance(s, (int, float, np.integer, np.floating))
    try:
        ok = ok and math.isfinite(s) and abs(s) <= MAX_STRENGTH
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise ValueError(f"a strength must be a finite number within +-{MAX_STRENGTH:g}, got {s!r:.80}")
    return float(s)


def parse_strengths(text: str) -> list[float]:
    """``"-3,-1.5,0,1.5,3"`` -> the steps; each a strength (``check_strength``), at most ``MAX_STEPS``."""
    try:
        steps = [check_strength(float(s)) for s in text.split(",")]
    except ValueError:
        steps = []
    if not 1 <= len(steps) <= MAX_STEPS:
        raise ValueError(f"--strengths takes 1 to {MAX_STEPS} comma-separated numbers, each finite and within "
                         f"+-{MAX_STRENGTH:g}, got {text!r}")
    return steps


def edit_grid(gen, z: np.ndarray, keys, steps: list[float], label=None) -> np.ndarray:
    """uint8 images of latent ``z`` [D] moved by each of ``steps`` along each direction named in ``keys``:
    one row of ``len(steps)`` images per direction (a conditional model's: all of class ``label``)."""
    if not gen.directions:
        raise ValueError(f"{gen.path.name} carries no latent directions; add them with "
                         f"`dcgan-deploy directions {gen.path} [--labelled]`")
    if len(keys) > MAX_DIRECTIONS:
        raise ValueError(f"{len(keys)} directions to edit along; at most {MAX_DIRECTIONS} (one row each)")
    from .images import check_grid_size
    check_grid_size(len(keys) * len(steps), gen.height, gen.width, shape=(len(keys), len(steps)))
    chosen = [find(gen.directions, k) for k in keys]
    rows = [z[None] + np.asarray(steps, np.float32)[:, None] * d.vector[None] for d in chosen]   # [S, D] each
    return np.concatenate(list(gen.images(np.concatenate(rows).astype(np.float32), label=label)))


def find(directions: list[Direction], key: str) -> Direction:
    """A direction by name, or by its 1-based number in the list."""
    for d in directions:
        if d.name == key:
            return d
    if key.isdigit() and 1 <= int(key) <= len(directions):
        return directions[int(key) - 1]
    known = ", ".join(d.name for d in directions)
    raise ValueError(f"unknown direction {key!r}; this model has: {known}")
