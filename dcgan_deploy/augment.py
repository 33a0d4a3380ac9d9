"""Differentiable augmentation for the discriminator (torch): DiffAugment, Zhao et al. 2020.

A discriminator trained on a few thousand images memorises them and its gradients stop
teaching the generator. DiffAugment shows D only augmented images -- real *and* generated,
through the same differentiable transforms -- so D cannot memorise the real set, and the
augmentation does not leak into the generator (G is trained through the augmented D, and
every transform is differentiable). Augmenting only the real images would teach G to make
augmented-looking images.

Policies (applied in this order, each sample with its own random parameters):

- ``color``: brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the pixel's channel
  mean), contrast (x U(0.5, 1.5) around the image mean), then clamped to [-1, 1];
- ``flip``: mirror left to right, each image with probability 1/2 (ADA's x-flip);
- ``translation``: shift by up to 1/8 of the side in each direction, filling with 0 (mid grey);
- ``cutout``: zero (mid grey) one square of half the side, at a random place.

The random parameters come from a ``torch.Generator`` (drawn on the CPU), so a run that
checkpoints the generator's state resumes exactly; the same generator state gives the
same transforms, whatever the batch holds. Images stay in [-1, 1].

Adaptive strength (ADA, Karras et al. 2020): with ``p < 1`` each image gets each transform
with probability ``p``; the trainer raises ``p`` while D calls too many real images real (its
overfitting signal, ``ada_target``) and lowers it otherwise, so a run starts unaugmented, where
it learns fastest, and augments as much as D's overfitting needs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

POLICIES = ("color", "flip", "translation", "cutout")


def parse_policy(text: str) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> the policies in canonical order; ``""`` -> none."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"augment: unknown policy {unknown[0]!r}; use a comma-separated subset of "
                         f"{', '.join(POLICIES)} (or \"\" for none)")
    return tuple(p for p in POLICIES if p in names)


def augment(x: torch.Tensor, policy: Sequence[str], generator: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` in [-1, 1] -> the same shape, augmented by ``policy``, differentiably.

    ``p``: the probability that a given image gets a given transform (each image and transform drawn
    apart, as in ADA); 1 = every image gets every transform (DiffAugment), 0 = none (``x`` returned)."""
    if p <= 0:
        return x
    for name in POLICIES:
        if name in policy:
            changed = _FUNCTIONS[name](x, generator)
            if p < 1:
                changed = torch.where(_rand(generator, x.shape[0], 1, 1, 1, like=x) < p, changed, x)
            x = changed
    return x


def _rand(generator: torch.Generator, *shape: int, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(*shape, generator=generator).to(like.device, like.dtype)


def color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    brightness, saturation, contrast = _rand(generator, 3, n, 1, 1, 1, like=x)
    x = x + (brightness - 0.5)
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (saturation * 2) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (contrast + 0.5) + mean
    return x.clamp(-1, 1)


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    mirrored = _rand(generator, x.shape[0], 1, 1, 1, like=x) < 0.5
    return torch.where(mirrored, x.flip(3), x)


def translation(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), generator=generator).to(x.device)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), generator=generator).to(x.device)
    # gather from a copy padded with one ring of zeros: an index past the border reads 0
    rows = (torch.arange(h, device=x.device)[None, :, None] + dy + 1).clamp(0, h + 1)   # [N, H, 1]
    cols = (torch.arange(w, device=x.device)[None, None, :] + dx + 1).clamp(0, w + 1)   # [N, 1, W]
    padded = F.pad(x, (1, 1, 1, 1))                                                      # [N, C, H+2, W+2]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)             # [N, C, H, W]


def cutout(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # the square's centre; the square may hang over the border (as in DiffAugment)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=generator).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=generator).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = (ys >= cy - ch // 2) & (ys < cy - ch // 2 + ch) & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw)
    return x * (~inside)[:, None].to(x.dtype)                                            # [N, C, H, W]


_FUNCTIONS = {"color": color, "flip": flip, "translation": translation, "cutout": cutout}
