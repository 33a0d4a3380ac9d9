"""The GAN losses and D's regulariser (torch): the trainer's one extension point for them, as
StyleGAN2-ADA's ``loss.py``. A new loss is one entry in ``LOSSES``; its name goes in a recipe's
``[discriminator] loss``.

- ``bce``: the non-saturating loss (Goodfellow et al.; Radford et al.'s DCGAN): D's binary cross
  entropy on real and generated images, G's on its images labelled real.
- ``hinge``: D's hinge loss, G's -D(G(z)) (Miyato et al., Zhang et al.).
- ``r1_penalty``: R1 on real images (Mescheder et al.), applied lazily every ``every`` steps.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Loss(NamedTuple):
    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (D's logits on real, on generated) -> D's loss
    g: Callable[[torch.Tensor], torch.Tensor]                # D's logits on G's images -> G's loss


def _bce_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


def _bce_g(d_on_fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(d_on_fake, torch.ones_like(d_on_fake))


def _hinge_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()


def _hinge_g(d_on_fake: torch.Tensor) -> torch.Tensor:
    return -d_on_fake.mean()


LOSSES = {"bce": Loss(_bce_d, _bce_g), "hinge": Loss(_hinge_d, _hinge_g)}


def r1_penalty(D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, gamma: float, every: int) -> torch.Tensor:
    """gamma / 2 * E ||grad_x D(x)||^2 on real images ``real`` (as D sees them), in fp32, scaled by ``every``
    because it is applied only every ``every`` steps."""
    x = real.detach().requires_grad_(True)
    grad, = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return gamma / 2 * every * grad.pow(2).flatten(1).sum(1).mean()
