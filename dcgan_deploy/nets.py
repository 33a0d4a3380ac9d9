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

from .modelfile import MAX_LATENT_DIM, PRIORS

KERAS_BN = {"momentum": 0.2, "eps": 1e-3}

# arch -> (latent_dim, latent_prior, channels, image_size, g_width, d_width)
DEFAULTS = {
    "mnist-dcgan": (100, "normal", 1, 28, 64, 32),
    "mnist-dcgan-wide": (100, "normal", 1, 28, 64, 32),
    "dcgan64": (100, "normal", 3, 64, 64, 64),
    "mnist-mlp": (100, "normal", 1, 28, 256, 256),
    "mnist-convt": (96, "uniform", 1, 28, 64, 32),
    "pytorch-gan-mlp": (100, "normal", 1, 28, 128, 512),
    "pytorch-gan-dcgan": (100, "normal", 1, 28, 128, 16),
}
# pytorch-GAN's layouts (``gan``/``cgan``, ``dcgan``/``acgan``), whose state dicts the checkpoint reader
# renames; built for any ``--img_size``, they take any image size that is a multiple of 4 in this range
# (the other architectures only their own).
PYTORCH_GAN = ("pytorch-gan-mlp", "pytorch-gan-dcgan")
IMAGE_SIZES = range(8, 129, 4)
DCGAN_INIT = ("dcgan64", "pytorch-gan-dcgan")  # initialised as Radford et al. (``dcgan_init``)
# How a conditional generator takes its label: its class embedding joined to the latent ("join", an
# embedding as wide as there are classes, as pytorch-GAN's cgan), or the latent multiplied by an embedding
# as wide as the latent ("multiply", as pytorch-GAN's acgan).
CONDITIONING = {"pytorch-gan-dcgan": "multiply"}
ARCHITECTURES = tuple(DEFAULTS)
MAX_WIDTH = 1024       # g_width / d_width, a sanity bound; the real one is MAX_PARAMETERS
MAX_CLASSES = 1000     # classes of a conditional model
MAX_PARAMETERS = 100_000_000  # per network (400 MB of float32); the default dcgan64 generator has 3.6 M


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
    num_classes: int = 0  # > 0: class-conditional (G takes a label, D projects it); 0: unconditional

    def __post_init__(self):
        """Refuse sizes a checkpoint or recipe may claim but no one means (checked before any weight exists)."""
        if self.arch not in DEFAULTS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose from {', '.join(ARCHITECTURES)}")
        for name, lo, hi in (("latent_dim", 1, MAX_LATENT_DIM), ("g_width", 2, MAX_WIDTH), ("d_width", 1, MAX_WIDTH),
                             ("num_classes", 0, MAX_CLASSES)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
        if isinstance(self.channels, bool) or self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if self.latent_prior not in PRIORS:
            raise ValueError(f"latent_prior must be one of {', '.join(PRIORS)}, got {self.latent_prior!r}")
        if self.arch in PYTORCH_GAN:
            if type(self.image_size) is not int or self.image_size not in IMAGE_SIZES:
                raise ValueError(f"{self.arch} makes images of a size that is a multiple of 4 from "
                                 f"{IMAGE_SIZES[0]} to {IMAGE_SIZES[-1]}; image_size={self.image_size!r} is not one")
        elif self.image_size != DEFAULTS[self.arch][3]:
            raise ValueError(f"{self.arch} makes {DEFAULTS[self.arch][3]}x{DEFAULTS[self.arch][3]} images; "
                             f"image_size={self.image_size!r} is not supported")

    @classmethod
    def for_arch(cls, arch: str, **overrides) -> "NetConfig":
        if arch not in DEFAULTS:
            raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
        fields = dict(zip(("latent_dim", "latent_prior", "channels", "image_size", "g_width", "d_width"),
                          DEFAULTS[arch]), num_classes=0)
        unknown = set(overrides) - set(fields)
        if unknown:
            raise ValueError(f"unknown architecture settings: {', '.join(sorted(unknown))}")
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(arch=arch, **fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "NetConfig":
        """A config from a checkpoint's dict: every field present, of the right type and in range."""
        if not isinstance(d, dict):
            raise ValueError(f"the architecture config must be a dict, got {type(d).__name__}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and f.name != "num_classes"]
        if missing:
            raise ValueError(f"the architecture config lacks {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})  # num_classes: 0 if absent

    @property
    def conditioning(self) -> str:
        """How a conditional generator takes its label: "join" or "multiply" (``CONDITIONING``)."""
        return CONDITIONING.get(self.arch, "join")

    @property
    def embed_dim(self) -> int:
        """The width of a conditional generator's class embedding."""
        return self.latent_dim if self.conditioning == "multiply" else self.num_classes

    @property
    def input_dim(self) -> int:
        """What the generator's first layer takes: the latent, and a conditional model's joined class embedding."""
        return self.latent_dim + (self.num_classes if self.conditioning == "join" else 0)


class GeneratorNet(nn.Module):
    """z ``[n, latent_dim]`` (and, class-conditional, ``label`` int64 ``[n]``) -> image ``[n, C, H, W]`` in [-1, 1].

    A conditional generator joins a learned class embedding (``num_classes`` wide, as pytorch-GAN's
    ``cgan``) to the latent before its first layer, or (``pytorch-gan-dcgan``, as pytorch-GAN's ``acgan``)
    multiplies the latent by one as wide as the latent."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.main = _GENERATORS[cfg.arch](cfg)
        if cfg.num_classes:
            self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        if cfg.arch in DCGAN_INIT and not next(self.parameters()).is_meta:  # meta: counted, never run
            self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None, label_to: torch.Tensor | None = None,
                mix: torch.Tensor | None = None) -> torch.Tensor:
        """``label_to`` and ``mix`` (a conditional generator's, optional): the class embedding moved a share
        ``mix`` of the way from ``label``'s to ``label_to``'s, ``e + mix * (e_to - e)`` (at ``mix`` 0 exactly
        ``label``'s): a walk from one class to another for one latent."""
        if self.cfg.num_classes:
            if label is None:
                raise ValueError(f"this generator is class-conditional ({self.cfg.num_classes} classes): give labels")
            e = self.embed(label)
            if mix is not None:
                e = e + mix[:, None] * (self.embed(label_to) - e)
            z = z * e if self.cfg.conditioning == "multiply" else torch.cat([z, e], 1)
        if self.cfg.arch == "dcgan64":
            z = z[:, :, None, None]  # [n, nz] -> [n, nz, 1, 1]: the canonical net starts from a 1x1 map
        return self.main(z)


class DiscriminatorNet(nn.Module):
    """image ``[n, C, H, W]`` -> logit ``[n]``.

    ``spectral_norm``: every convolution and linear layer spectrally normalised (Miyato et al.:
    each weight divided by its largest singular value, estimated by one power iteration per
    training forward), and the BatchNorms removed: D is then 1-Lipschitz per layer, and each
    image's logit depends on that image alone.

    ``classifier``: a conditional D also gets an auxiliary classifier (Odena et al. 2017), a linear head on
    the features its last layer reads, that names the image's class; ``forward(x, label, classes=True)``
    returns ``(logit, class_logits)``.
    """

    def __init__(self, cfg: NetConfig, spectral_norm: bool = False, classifier: bool = False):
        super().__init__()
        self.cfg = cfg
        self.main = _DISCRIMINATORS[cfg.arch](cfg)
        if classifier and not cfg.num_classes:
            raise ValueError("an auxiliary classifier needs a class-conditional discriminator")
        if cfg.num_classes:  # projection (Miyato & Koyama 2018): <embed(y), the features D's last layer reads>
            features = self._features()
            self.project = nn.Embedding(cfg.num_classes, features)
            if not self.project.weight.is_meta:
                nn.init.normal_(self.project.weight, 0, 0.02)
            self.classify = nn.Linear(features, cfg.num_classes) if classifier else None
        if cfg.arch in DCGAN_INIT and not next(self.parameters()).is_meta:  # meta: counted, never run
            self.apply(dcgan_init)
        if spectral_norm:
            layers = [nn.Identity() if isinstance(m, nn.modules.batchnorm._BatchNorm) else m for m in self.main]
            for m in layers:
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(m)
            self.main = nn.Sequential(*layers)

    def _features(self) -> int:
        """How many values D's last layer reads per image."""
        device = next(self.parameters()).device
        body = self.main[:-1]
        was = body.training
        with torch.no_grad():
            h = body.eval()(torch.zeros(2, self.cfg.channels, self.cfg.image_size, self.cfg.image_size, device=device))
        body.train(was)
        return h[0].numel()

    @property
    def has_batchnorm(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None, classes: bool = False):
        if not self.cfg.num_classes:
            return self.main(x).reshape(-1)
        h = self.main[:-1](x)
        logit = self.main[-1](h).reshape(-1) + (self.project(label) * h.flatten(1)).sum(1)
        if not classes:
            return logit
        if self.classify is None:
            raise ValueError("this discriminator has no auxiliary classifier")
        return logit, self.classify(h.flatten(1))


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
        nn.Linear(c.input_dim, w // 2 * 7 * 7), nn.ReLU(),
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
        nn.Linear(c.input_dim, 2 * w * 7 * 7), nn.ReLU(),
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
        nn.ConvTranspose2d(c.input_dim, w * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(w * 8), nn.ReLU(True),  # 4x4
        nn.ConvTranspose2d(w * 8, w * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 4), nn.ReLU(True),        # 8x8
        nn.ConvTranspose2d(w * 4, w * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 2), nn.ReLU(True),        # 16x16
        nn.ConvTranspose2d(w * 2, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),                # 32x32
        nn.ConvTranspose2d(w, c.channels, 4, 2, 1, bias=False), nn.Tanh(),                                  # 64x64
    )


def g_mnist_mlp(c: NetConfig) -> nn.Sequential:
    w = c.g_width
    layers, cin = [], c.input_dim
    for cout in (w, 2 * w, 4 * w):
        layers += [nn.Linear(cin, cout), nn.LeakyReLU(0.2), nn.BatchNorm1d(cout, **KERAS_BN)]
        cin = cout
    size = c.channels * 28 * 28
    return nn.Sequential(*layers, nn.Linear(cin, size), nn.Tanh(), nn.Unflatten(1, (c.channels, 28, 28)))


def g_mnist_convt(c: NetConfig) -> nn.Sequential:
    w = c.g_width
    return nn.Sequential(
        nn.Linear(c.input_dim, 16 * w), nn.ReLU(), nn.BatchNorm1d(16 * w),
        nn.Linear(16 * w, 2 * w * 7 * 7), nn.ReLU(), nn.BatchNorm1d(2 * w * 7 * 7),
        nn.Unflatten(1, (2 * w, 7, 7)),                                        # [n, 2w, 7, 7]
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(), nn.BatchNorm2d(w),   # 14x14
        nn.ConvTranspose2d(w, c.channels, 4, 2, 1), nn.Tanh(),                # 28x28
    )


def g_pytorch_gan_mlp(c: NetConfig) -> nn.Sequential:
    # Layer order and indices match pytorch-GAN's gan.py / cgan.py Generator.model (model.0 ... model.12);
    # its BatchNorm1d(n, 0.8) is eps 0.8.
    w, s = c.g_width, c.image_size
    layers, cin = [nn.Linear(c.input_dim, w), nn.LeakyReLU(0.2)], w
    for cout in (2 * w, 4 * w, 8 * w):
        layers += [nn.Linear(cin, cout), nn.BatchNorm1d(cout, eps=0.8), nn.LeakyReLU(0.2)]
        cin = cout
    return nn.Sequential(*layers, nn.Linear(cin, c.channels * s * s), nn.Tanh(), nn.Unflatten(1, (c.channels, s, s)))


def g_pytorch_gan_dcgan(c: NetConfig) -> nn.Sequential:
    # pytorch-GAN's dcgan.py / acgan.py Generator: l1.0 is main.0, conv_blocks.k is main.(k + 2).
    w, s = c.g_width, c.image_size // 4
    return nn.Sequential(
        nn.Linear(c.input_dim, w * s * s), nn.Unflatten(1, (w, s, s)), nn.BatchNorm2d(w),          # size/4
        nn.Upsample(scale_factor=2), conv3(w, w), nn.BatchNorm2d(w, eps=0.8), nn.LeakyReLU(0.2),   # size/2
        nn.Upsample(scale_factor=2), conv3(w, w // 2), nn.BatchNorm2d(w // 2, eps=0.8), nn.LeakyReLU(0.2),  # size
        conv3(w // 2, c.channels), nn.Tanh(),
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


def d_pytorch_gan_mlp(c: NetConfig) -> nn.Sequential:
    w = c.d_width
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c.channels * c.image_size ** 2, w), nn.LeakyReLU(0.2),
        nn.Linear(w, w // 2), nn.LeakyReLU(0.2), nn.Linear(w // 2, 1),
    )


def d_pytorch_gan_dcgan(c: NetConfig) -> nn.Sequential:
    w, layers, cin, s = c.d_width, [], c.channels, c.image_size
    for cout, bn in ((w, False), (2 * w, True), (4 * w, True), (8 * w, False)):
        layers += [conv3(cin, cout, 2), nn.LeakyReLU(0.2), nn.Dropout2d(0.25)]
        layers += [nn.BatchNorm2d(cout, eps=0.8)] if bn else []
        cin, s = cout, (s + 1) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * w * s * s, 1))


_GENERATORS = {"mnist-dcgan": g_mnist_dcgan, "mnist-dcgan-wide": g_mnist_dcgan_wide, "dcgan64": g_dcgan64,
               "mnist-mlp": g_mnist_mlp, "mnist-convt": g_mnist_convt, "pytorch-gan-mlp": g_pytorch_gan_mlp,
               "pytorch-gan-dcgan": g_pytorch_gan_dcgan}
_DISCRIMINATORS = {"mnist-dcgan": d_mnist_dcgan, "mnist-dcgan-wide": d_mnist_dcgan_wide, "dcgan64": d_dcgan64,
                   "mnist-mlp": d_mnist_mlp, "mnist-convt": d_mnist_convt, "pytorch-gan-mlp": d_pytorch_gan_mlp,
                   "pytorch-gan-dcgan": d_pytorch_gan_dcgan}


def sample_prior(n: int, cfg: NetConfig, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Training-time latents ``[n, latent_dim]`` from the model's prior (torch RNG)."""
    z = torch.randn(n, cfg.latent_dim, generator=generator, device=device) if cfg.latent_prior == "normal" \
        else torch.rand(n, cfg.latent_dim, generator=generator, device=device) * 2 - 1
    return z


def check_size(cfg: NetConfig) -> None:
    """Refuse a config whose generator or discriminator would exceed ``MAX_PARAMETERS``: counted on
    torch's meta device, so nothing is allocated for a hostile config."""
    with torch.device("meta"):
        for kind, net in (("generator", GeneratorNet), ("discriminator", DiscriminatorNet)):
            count = sum(p.numel() for p in net(cfg).parameters())
            if count > MAX_PARAMETERS:
                raise ValueError(f"this {cfg.arch} {kind} would have {count / 1e6:.0f} M parameters (limit "
                                 f"{MAX_PARAMETERS / 1e6:.0f} M); use a smaller g_width / d_width / latent_dim")


@torch.no_grad()
def recompute_bn_stats(gen: GeneratorNet, batches: int = 16, batch_size: int = 256, seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics for ``gen``'s current weights.

    Needed after EMA: averaged weights do not match the running statistics of the
    raw weights. Uses a cumulative average over ``batches`` prior batches.
    """
    bns = [m for m in gen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    device = next(gen.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(seed)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    labels = torch.arange(batch_size, device=device) % max(gen.cfg.num_classes, 1)  # every class alike
    for _ in range(batches):
        z = sample_prior(batch_size, gen.cfg, g).to(device)
        gen(z, labels) if gen.cfg.num_classes else gen(z)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)


class TorchRunners:
    """PyTorch's side of a speed comparison (``bench``): a generator run eagerly or compiled, on a device."""

    def __init__(self, model: nn.Module):
        self.model = model

    def check_device(self, device: str) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("the model runs on CUDA but this PyTorch has no CUDA: it cannot be compared on the "
                             "same device (leave out --ckpt, or install a CUDA build of torch)")

    def eager(self, z, threads: int, device: str = "cpu", model: nn.Module | None = None):
        """PyTorch on the same latents, on ``device`` (the onnxruntime session's), warmed up (for a
        compiled model the first call compiles): a callable for one batch, which waits for the GPU, and
        the seconds of that first call."""
        import time
        torch.set_num_threads(threads)
        model = self.model if model is None else model
        x = torch.from_numpy(z)
        sync = None
        if device == "cuda":
            model, x, sync = model.to("cuda"), x.to("cuda"), torch.cuda.synchronize

        def run():
            with torch.inference_mode():
                model(x)
            if sync:
                sync()
        start = time.perf_counter()
        run()
        return run, time.perf_counter() - start

    def compiled(self, z, threads: int, device: str = "cpu") -> tuple:
        """``torch.compile`` (inductor, shapes fixed) of the model, warmed up on ``z``: (callable, compile
        seconds, None), or (None, None, why) where it does not work here (no C++ compiler, say)."""
        from .bench import why
        try:
            run, seconds = self.eager(z, threads, device, torch.compile(self.model.to(device), dynamic=False))
        except Exception as e:  # noqa: BLE001 -- any failure to compile is reported in the row, not raised
            return None, None, why(e)
        return run, seconds, None
