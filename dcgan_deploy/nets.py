"""The DCGAN-family architectures (torch): a generator and its discriminator each.

Every generator keeps its layers in an ``nn.Sequential`` called ``main`` (as in the
pytorch/examples DCGAN), so ``dcgan64`` loads the canonical ``netG_epoch_N.pth``
state dicts as they are, and export can fold BatchNorm by walking one list.
Discriminators output logits ``[n]`` (no sigmoid: the loss is BCE-with-logits).

Keras-derived nets use Keras' BatchNormalization settings: momentum 0.8 in Keras is
PyTorch momentum 0.2, and Keras' eps is 1e-3.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

KERAS_BN = {"momentum": 0.2, "eps": 1e-3}

# arch -> (latent_dim, latent_prior, channels, image_size, g_width, d_width)
DEFAULTS = {
    "mnist-dcgan": (100, "normal", 1, 28, 64, 32),
    "mnist-dcgan-wide": (100, "normal", 1, 28, 64, 32),
    "dcgan64": (100, "normal", 3, 64, 64, 64),
    "mnist-mlp": (100, "normal", 1, 28, 256, 256),
    "mnist-convt": (96, "uniform", 1, 28, 64, 32),
}
ARCHITECTURES = tuple(DEFAULTS)


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild a generator and its discriminator; saved in checkpoints."""

    arch: str
    latent_dim: int
    latent_prior: str
    channels: int
    image_size: int
    g_width: int  # base width of the generator (ngf for dcgan64)
    d_width: int  # base width of the discriminator (ndf for dcgan64)

    @classmethod
    def for_arch(cls, arch: str, **overrides) -> "NetConfig":
        if arch not in DEFAULTS:
            raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
        fields = dict(zip(("latent_dim", "latent_prior", "channels", "image_size", "g_width", "d_width"),
                          DEFAULTS[arch]))
        unknown = set(overrides) - set(fields)
        if unknown:
            raise ValueError(f"unknown architecture settings: {', '.join(sorted(unknown))}")
        size = fields["image_size"]
        fields.update({k: v for k, v in overrides.items() if v is not None})
        if fields["image_size"] != size:
            raise ValueError(f"{arch} makes {size}x{size} images; image_size={fields['image_size']} is not supported")
        return cls(arch=arch, **fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


class Generator(nn.Module):
    """z ``[n, latent_dim]`` -> image ``[n, C, H, W]`` in [-1, 1]."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.main = _GENERATORS[cfg.arch](cfg)
        if cfg.arch == "dcgan64":
            self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.arch == "dcgan64":
            z = z[:, :, None, None]  # [n, nz] -> [n, nz, 1, 1]: the canonical net starts from a 1x1 map
        return self.main(z)


class Discriminator(nn.Module):
    """image ``[n, C, H, W]`` -> logit ``[n]``."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.main = _DISCRIMINATORS[cfg.arch](cfg)
        if cfg.arch == "dcgan64":
            self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).reshape(-1)


def dcgan_init(m: nn.Module) -> None:
    """Radford et al.: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with Keras 'same' output size."""
    return nn.Conv2d(cin, cout, 3, stride, 1)


# ---- generators ---------------------------------------------------------------------
def g_mnist_dcgan(c: NetConfig) -> nn.Sequential:
    w = c.g_width
    return nn.Sequential(
        nn.Linear(c.latent_dim, w // 2 * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (w // 2, 7, 7)),                                      # [n, w/2, 7, 7]
        conv3(w // 2, w), nn.BatchNorm2d(w, **KERAS_BN), nn.ReLU(),
        nn.Upsample(scale_factor=2),                                          # 14x14
        conv3(w, 2 * w), nn.BatchNorm2d(2 * w, **KERAS_BN), nn.ReLU(),
        nn.Upsample(scale_factor=2),                                          # 28x28
        conv3(2 * w, w), nn.BatchNorm2d(w, **KERAS_BN), nn.ReLU(),
        conv3(w, c.channels), nn.Tanh(),
    )


def g_mnist_dcgan_wide(c: NetConfig) -> nn.Sequential:
    w = c.g_width
    return nn.Sequential(
        nn.Linear(c.latent_dim, 2 * w * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (2 * w, 7, 7)),                                       # [n, 2w, 7, 7]
        nn.Upsample(scale_factor=2),                                          # 14x14
        conv3(2 * w, 2 * w), nn.BatchNorm2d(2 * w, **KERAS_BN), nn.ReLU(),
        nn.Upsample(scale_factor=2),                                          # 28x28
        conv3(2 * w, w), nn.BatchNorm2d(w, **KERAS_BN), nn.ReLU(),
        conv3(w, c.channels), nn.Tanh(),
    )


def g_dcgan64(c: NetConfig) -> nn.Sequential:
    # Layer order and indices match pytorch/examples dcgan/main.py (main.0 ... main.13).
    w = c.g_width
    return nn.Sequential(
        nn.ConvTranspose2d(c.latent_dim, w * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(w * 8), nn.ReLU(True),  # 4x4
        nn.ConvTranspose2d(w * 8, w * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 4), nn.ReLU(True),        # 8x8
        nn.ConvTranspose2d(w * 4, w * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 2), nn.ReLU(True),        # 16x16
        nn.ConvTranspose2d(w * 2, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),                # 32x32
        nn.ConvTranspose2d(w, c.channels, 4, 2, 1, bias=False), nn.Tanh(),                                  # 64x64
    )


def g_mnist_mlp(c: NetConfig) -> nn.Sequential:
    w = c.g_width
    layers, cin = [], c.latent_dim
    for cout in (w, 2 * w, 4 * w):
        layers += [nn.Linear(cin, cout), nn.LeakyReLU(0.2), nn.BatchNorm1d(cout, **KERAS_BN)]
        cin = cout
    size = c.channels * 28 * 28
    return nn.Sequential(*layers, nn.Linear(cin, size), nn.Tanh(), nn.Unflatten(1, (c.channels, 28, 28)))


def g_mnist_convt(c: NetConfig) -> nn.Sequential:
    w = c.g_width
    return nn.Sequential(
        nn.Linear(c.latent_dim, 16 * w), nn.ReLU(), nn.BatchNorm1d(16 * w),
        nn.Linear(16 * w, 2 * w * 7 * 7), nn.ReLU(), nn.BatchNorm1d(2 * w * 7 * 7),
        nn.Unflatten(1, (2 * w, 7, 7)),                                        # [n, 2w, 7, 7]
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(), nn.BatchNorm2d(w),   # 14x14
        nn.ConvTranspose2d(w, c.channels, 4, 2, 1), nn.Tanh(),                # 28x28
    )


# ---- discriminators -----------------------------------------------------------------
def d_mnist_dcgan(c: NetConfig) -> nn.Sequential:
    w = c.d_width
    return nn.Sequential(
        conv3(c.channels, w, 2), nn.LeakyReLU(0.2), nn.BatchNorm2d(w, **KERAS_BN),              # 14x14
        conv3(w, 2 * w, 2), nn.BatchNorm2d(2 * w, **KERAS_BN), nn.LeakyReLU(0.2),               # 7x7
        nn.ZeroPad2d((0, 1, 0, 1)),                                                             # 8x8
        conv3(2 * w, 4 * w, 2), nn.BatchNorm2d(4 * w, **KERAS_BN), nn.LeakyReLU(0.2),           # 4x4
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 1),
    )


def d_mnist_dcgan_wide(c: NetConfig) -> nn.Sequential:
    w = c.d_width
    return nn.Sequential(
        conv3(c.channels, w, 2), nn.LeakyReLU(0.2), nn.Dropout(0.25),                           # 14x14
        conv3(w, 2 * w, 2), nn.ZeroPad2d((0, 1, 0, 1)),                                         # 7x7 -> 8x8
        nn.BatchNorm2d(2 * w, **KERAS_BN), nn.LeakyReLU(0.2), nn.Dropout(0.25),
        conv3(2 * w, 4 * w, 2), nn.BatchNorm2d(4 * w, **KERAS_BN), nn.LeakyReLU(0.2), nn.Dropout(0.25),  # 4x4
        conv3(4 * w, 8 * w, 1), nn.BatchNorm2d(8 * w, **KERAS_BN), nn.LeakyReLU(0.2), nn.Dropout(0.25),  # 4x4
        nn.Flatten(), nn.Linear(8 * w * 4 * 4, 1),
    )


def d_dcgan64(c: NetConfig) -> nn.Sequential:
    w = c.d_width
    return nn.Sequential(
        nn.Conv2d(c.channels, w, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),                    # 32x32
        nn.Conv2d(w, w * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 2), nn.LeakyReLU(0.2, inplace=True),  # 16x16
        nn.Conv2d(w * 2, w * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 4), nn.LeakyReLU(0.2, inplace=True),  # 8x8
        nn.Conv2d(w * 4, w * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 8), nn.LeakyReLU(0.2, inplace=True),  # 4x4
        nn.Conv2d(w * 8, 1, 4, 1, 0, bias=False),                                                          # 1x1
    )


def d_mnist_mlp(c: NetConfig) -> nn.Sequential:
    w = c.d_width
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c.channels * 28 * 28, 2 * w), nn.LeakyReLU(0.2),
        nn.Linear(2 * w, w), nn.LeakyReLU(0.2), nn.Linear(w, 1),
    )


def d_mnist_convt(c: NetConfig) -> nn.Sequential:
    w = c.d_width
    return nn.Sequential(
        nn.Conv2d(c.channels, w, 5), nn.LeakyReLU(0.01), nn.MaxPool2d(2),       # 24 -> 12
        nn.Conv2d(w, 2 * w, 5), nn.LeakyReLU(0.01), nn.MaxPool2d(2),            # 8 -> 4
        nn.Flatten(), nn.Linear(2 * w * 4 * 4, 32 * w), nn.LeakyReLU(0.01), nn.Linear(32 * w, 1),
    )


_GENERATORS = {"mnist-dcgan": g_mnist_dcgan, "mnist-dcgan-wide": g_mnist_dcgan_wide, "dcgan64": g_dcgan64,
               "mnist-mlp": g_mnist_mlp, "mnist-convt": g_mnist_convt}
_DISCRIMINATORS = {"mnist-dcgan": d_mnist_dcgan, "mnist-dcgan-wide": d_mnist_dcgan_wide, "dcgan64": d_dcgan64,
                   "mnist-mlp": d_mnist_mlp, "mnist-convt": d_mnist_convt}


def sample_prior(n: int, cfg: NetConfig, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Training-time latents ``[n, latent_dim]`` from the model's prior (torch RNG)."""
    z = torch.randn(n, cfg.latent_dim, generator=generator, device=device) if cfg.latent_prior == "normal" \
        else torch.rand(n, cfg.latent_dim, generator=generator, device=device) * 2 - 1
    return z
