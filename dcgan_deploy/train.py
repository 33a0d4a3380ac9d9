"""The training loop (torch): a GAN loss, Adam, crash-safe and exactly resumable.

A run directory holds ``train_state.pt`` (resume), ``generator.safetensors`` (export),
``config.json``, ``log.jsonl`` (losses) and ``samples/step_NNNNNN.png`` (a grid from a
fixed latent batch, the same latents as ``dcgan-deploy generate -n 64 --seed 0``).

Deterministic by default: oneDNN's convolutions in their deterministic mode (by default
their backward passes may sum partial results in whatever order threads finish, so two
identical runs can differ in the last bits, and more after thousands of steps), PyTorch's
deterministic algorithms, and a thread count fixed for the run and kept on resume. Two runs
of one recipe on one machine, and a run resumed from any checkpoint, give the same weights
bit for bit.

Data-parallel: launched by ``torchrun`` (RANK/WORLD_SIZE set), every rank draws the same
global batch and takes its own slice. The generator and the discriminator are each wrapped
in PyTorch's ``DistributedDataParallel`` (bucketed gradient all-reduce, overlapped with the
backward pass). GANs need two things DDP leaves to the caller: D's gradients must not be
reduced in G's update (G's loss goes through the plain D module, whose weights take no
gradient there), and BatchNorm buffers follow rank 0 (``broadcast_buffers``: DDP copies
rank 0's buffers at the start of each forward; SyncBatchNorm would instead normalise over
the global batch and change what a one-process run computes). So all ranks hold identical
weights; only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as datasets
from .augment import augment, parse_policy
from .checkpoint import (STATE_FORMAT, CheckpointError, average_note, check_average, load_mean, load_torch,
                         save_generator, save_train_state)
from .runtime import first_line
from .files import write_bytes
from .images import grid, save_png, to_uint8
from .latent import latents
from .nets import DiscriminatorNet, GeneratorNet, NetConfig, check_size, recompute_bn_stats, sample_prior


LOSSES = ("bce", "hinge")
LECAM_DECAY = 0.99  # LeCam's anchors: moving averages of D's mean logits (the paper's decay)
TOPK_DECAY = 0.99  # top-k training: k shrinks by this factor per epoch of the data (the paper's decay)
_TYPE_WORDS = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false",
               "dict": "a table"}


def _of_type(value, annotation: str) -> bool:
    """Does a recipe value fit its field's annotation (``int`` excludes booleans; ``float`` takes ints)?"""
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "dict": dict}[annotation])


class DivergenceError(RuntimeError):
    """Losses or weights became non-finite; the run's last checkpoint, if it has one, was kept."""


@dataclass
class TrainConfig:
    """A recipe: what to train on what, and how. Saved in the checkpoint and ``config.json``."""

    arch: str
    data: str = "mnist-sample"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    ema: float = 0.0  # decay of an EMA of the generator weights; 0 = off
    # Weight averaging (Polyak averaging of checkpoints): from step average_start on, every average_every steps,
    # the generator's weights (the EMA's when EMA is on) join a plain mean, and the generator the run deploys
    # (checkpoints, sample grids) is that mean, BatchNorm re-estimated. 0 = off. It does not change training.
    average_start: int = 0
    average_every: int = 1000
    # Linear learning-rate decay: lr until step lr_decay_start, then linearly down to 0 at
    # step lr_decay_end (and 0 after). 0 / 0 = constant lr. Fixed steps, not a share of
    # `steps`, so that resuming with more steps keeps the schedule of the steps already run.
    lr_decay_start: int = 0
    lr_decay_end: int = 0
    sample_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    device: str = "auto"
    # bf16 autocast and channels_last: "auto" turns them on for CUDA, and for CPUs with AMX
    # bf16 units (1.2-3.9x faster there: benchmarks/train_throughput.py, BENCHMARKS.md);
    # without AMX bf16 ran slower on some CPUs (AVX512-BF16 alone: faster on one, slower on another), so
    # "auto" keeps fp32 there. "on" / "off" force them.
    amp: str = "auto"
    channels_last: str = "auto"
    # The discriminator's side, for small data sets (the generator and its export do not change):
    loss: str = "bce"            # "bce": the non-saturating loss; "hinge": D hinge, G -D(G(z))
    lr_d: float = 0.0            # D's learning rate (two time-scale updates); 0 = lr
    augment: str = ""            # DiffAugment policies for D's inputs, real and fake: "color,translation,cutout"
    # Adaptive augmentation strength (ADA): 0 = off (every image augmented); otherwise the target for
    # E[sign(D(real))], D's overfitting signal (0.6 in the ADA paper): each image gets each transform with a
    # probability p that starts at 0 and moves by batch / ada_images per step, up while the signal is above
    # the target, down while below.
    ada_target: float = 0.0
    ada_images: int = 500_000
    spectral_norm: bool = False  # spectral normalisation on D's weights (its BatchNorms removed)
    # A BatchNorm D normalises real and generated images together, one forward of both batches in D's update
    # and in G's, instead of each batch by its own statistics (Radford et al.), which hides from D how a
    # generated batch differs from a real one on average.
    joint_batch: bool = False
    minibatch_std: int = 0       # a minibatch standard-deviation layer before D's last, over groups of this many; 0 = none
    r1: float = 0.0              # R1 penalty gamma on real images (0 = off) ...
    r1_every: int = 16           # ... applied every this many steps, scaled by it (lazy regularisation)
    lecam: float = 0.0           # LeCam regularisation weight (0 = off): D's logits held near moving anchors
    # Top-k training of G (Sinha et al. 2020): G learns from only the k of its images D scores highest; k
    # starts at the whole batch and shrinks by TOPK_DECAY per epoch of the data down to this share of the
    # batch. 0 = off (every image).
    top_k: float = 0.0
    deterministic: bool = True   # bitwise reproducible (see the module docstring); off: a little faster
    threads: int = 0             # intra-op threads; 0 = all cores, fixed at the run's start and kept on resume
    net: dict = field(default_factory=dict)  # NetConfig overrides (g_width, d_width, channels, latent_dim, ...)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        """Read a TOML recipe; keyword overrides (``None`` = keep) win."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"recipe not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read the recipe ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from None
        return cls.from_dict(raw, source=str(path), **overrides)

    @classmethod
    def from_dict(cls, raw, source: str = "config", **overrides) -> "TrainConfig":
        """A recipe from a dict: every key known, of its type and in its range (``ValueError`` naming the key)."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: a recipe must be a table of settings, got {type(raw).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(sorted(unknown))}")
        if "arch" not in raw:
            raise ValueError(f"{source}: the recipe must name an 'arch'")
        values = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
        for f in dataclasses.fields(cls):
            if f.name in values and not _of_type(values[f.name], f.type):
                raise ValueError(f"{source}: {f.name} must be {_TYPE_WORDS[f.type]}, got {values[f.name]!r}")
        cfg = cls(**values)
        try:
            cfg.check()
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        return cfg

    def check(self) -> None:
        """Ranges (types are checked by ``from_dict``)."""
        for name, hi in (("steps", 10**9), ("batch_size", 65536), ("sample_every", 10**9),
                         ("checkpoint_every", 10**9), ("log_every", 10**9), ("r1_every", 10**6),
                         ("ada_images", 10**12), ("average_every", 10**9)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= hi:
                raise ValueError(f"{name} must be a positive integer (at most {hi}), got {value!r}")
        for name in ("seed", "lr_decay_start", "lr_decay_end", "threads", "minibatch_std", "average_start"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.threads > 4 * (os.cpu_count() or 1):
            raise ValueError(f"threads must be at most {4 * (os.cpu_count() or 1)} (4 per core here), got {self.threads}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        for name in ("lr", "lr_d"):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > 0 or name == "lr_d" and value == 0)):
                raise ValueError(f"{name} must be a positive finite number{' (or 0 = lr)' if name == 'lr_d' else ''}, "
                                 f"got {value}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("r1", "lecam"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative finite number, got {value}")
        if not (math.isfinite(self.top_k) and 0 <= self.top_k <= 1):
            raise ValueError(f"top_k must be a share of the batch in (0, 1] (0 = off), got {self.top_k}")
        if self.minibatch_std == 1 or self.minibatch_std > self.batch_size:
            raise ValueError(f"minibatch_std must be 0 (off) or a group size from 2 to batch_size "
                             f"({self.batch_size}), got {self.minibatch_std!r}")
        if self.joint_batch and self.minibatch_std:
            raise ValueError("joint_batch and minibatch_std do not go together: a group of the joint batch would "
                             "mix real and generated images")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not (math.isfinite(self.ada_target) and 0 <= self.ada_target < 1):
            raise ValueError(f"ada_target must be in [0, 1) (0 = off), got {self.ada_target}")
        if not parse_policy(self.augment) and self.ada_target:
            raise ValueError("ada_target adapts the augmentation's strength: give augment policies too")
        if (self.lr_decay_start or self.lr_decay_end) and not self.lr_decay_end > self.lr_decay_start:
            raise ValueError(f"lr_decay_end ({self.lr_decay_end}) must be after lr_decay_start ({self.lr_decay_start})")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("amp", "channels_last"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise ValueError(f"{name} must be auto, on or off, got {getattr(self, name)!r}")
        if not self.data:
            raise ValueError("data must name a data source")
        for key, value in self.net.items():
            if isinstance(value, (bool, float, list, dict)):
                raise ValueError(f"[net] {key} must be {'a string' if key == 'latent_prior' else 'a whole number'}, "
                                 f"got {value!r}")
        check_size(self.net_config())  # validates arch and net overrides, and the nets' size

    def net_config(self) -> NetConfig:
        return NetConfig.for_arch(self.arch, **self.net)

    def lr_at(self, step: int) -> float:
        """The generator's learning rate for the update that step ``step`` (0-based) takes."""
        return self.lr * self.lr_scale(step)

    def lr_d_at(self, step: int) -> float:
        """The discriminator's learning rate at step ``step`` (``lr_d``, or ``lr``; the same schedule)."""
        return (self.lr_d or self.lr) * self.lr_scale(step)

    def lr_scale(self, step: int) -> float:
        if not self.lr_decay_end or step < self.lr_decay_start:
            return 1.0
        return max(0.0, (self.lr_decay_end - step) / (self.lr_decay_end - self.lr_decay_start))


@dataclass
class Dist:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device) -> "Dist":
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return cls()
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` for its training forward passes: in DistributedDataParallel under torchrun (gradients
        averaged over the ranks during the backward pass, BatchNorm buffers taken from rank 0 at each
        forward), as it is in one process."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel
        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=True)

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers on every rank (DDP does this at each forward; once more after the last step)."""
        if self.world == 1:
            return
        import torch.distributed as dist
        for b in module.buffers():
            dist.broadcast(b, 0)

    def close(self, ok: bool = True) -> None:
        """Tear the process group down before the process exits: a gloo group left to the interpreter's exit
        can abort the process ("terminate called without an active exception") after a finished run.
        After a clean run every rank waits for the others first; after an error it does not wait."""
        if self.world == 1:
            return
        import torch.distributed as dist
        if dist.is_initialized():
            if ok:
                dist.barrier()
                # gloo's worker thread drops the barrier's work (and the gathered tensors it holds) after the
                # barrier returns, which takes the GIL; let it, before the group's destructor (reached while
                # holding the GIL) joins that thread: otherwise the two can deadlock at exit on a busy machine.
                time.sleep(0.5)
            dist.destroy_process_group()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over the ranks (itself without torchrun)."""
        if self.world == 1:
            return value
        import torch.distributed as dist
        value = value.clone()
        dist.all_reduce(value)
        return value / self.world

    def gather_digests(self, digest: str) -> list[str]:
        """Every rank's digest (to check that all ranks hold the same weights)."""
        if self.world == 1:
            return [digest]
        import torch.distributed as dist
        out: list = [None] * self.world
        dist.all_gather_object(out, digest)
        return out


def set_determinism(cfg: "TrainConfig", device: torch.device) -> int:
    """Fix the thread count (``cfg.threads``, or all cores) and, with ``cfg.deterministic``, the
    deterministic kernels; returns the thread count (kept in the run's config for resume)."""
    threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.backends.mkldnn.deterministic = cfg.deterministic
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cudnn.benchmark = not cfg.deterministic
    # On CUDA some backward kernels (adaptive pooling, upsampling, grid sampling) have no deterministic
    # version: warn there.
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=device.type == "cuda")
    return threads


class Batches:
    """Seeded mini-batches in [-1, 1], sampled without replacement epoch by epoch.

    ``state_dict`` / ``load_state_dict`` make the sequence resumable exactly.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int):
        if len(images) < batch_size:
            raise datasets.DataError(f"the data has {len(images)} images, fewer than one batch of {batch_size}")
        self.images = torch.from_numpy(images)
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(images), generator=self.gen)
        self.pos = 0

    def next(self, rank: int = 0, world: int = 1):
        """The next global batch of ``batch_size * world`` images; this rank's slice, float ``[B, C, H, W]``."""
        need = self.batch_size * world
        if need > len(self.images):
            raise datasets.DataError(f"the data has {len(self.images)} images, fewer than one global batch of {need}")
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


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested, but torch sees no CUDA GPU")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (fast bf16 matrix units); False if torch cannot tell."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def all_finite(*modules: nn.Module) -> torch.Tensor:
    """A 0-d bool tensor on the modules' device: are all their floating-point tensors finite?
    Computed without a host sync (one concatenation), so a GPU step waits for nothing."""
    tensors = [t.reshape(-1) for m in modules for t in m.state_dict().values() if t.is_floating_point()]
    return torch.isfinite(torch.cat(tensors)).all()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


class Trainer:
    """One training run in ``run_dir``; ``Trainer.resume(run_dir)`` continues it exactly."""

    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike, progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.net = cfg.net_config()
        self.device = pick_device(cfg.device)
        if self.device.type == "cuda" and cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; before CUDA work
        cfg.threads = set_determinism(cfg, self.device)
        self.dist = Dist.setup(self.device)
        self.progress = progress and self.dist.main
        torch.manual_seed(cfg.seed)
        self.G = GeneratorNet(self.net).to(self.device)
        self.D = DiscriminatorNet(self.net, spectral_norm=cfg.spectral_norm, minibatch_std=cfg.minibatch_std).to(self.device)
        fast_bf16 = self.device.type == "cuda" or cpu_has_amx()
        self.amp = cfg.amp == "on" or (cfg.amp == "auto" and fast_bf16)
        self.memory_format = torch.channels_last if cfg.channels_last == "on" or (
            cfg.channels_last == "auto" and fast_bf16) else torch.contiguous_format
        self.G.to(memory_format=self.memory_format)
        self.D.to(memory_format=self.memory_format)
        self.G_train, self.D_train = self.dist.wrap(self.G), self.dist.wrap(self.D)  # DDP under torchrun
        self.ema = copy.deepcopy(self.G).eval() if cfg.ema else None
        betas = (cfg.beta1, cfg.beta2)
        self.optG = torch.optim.Adam(self.G.parameters(), cfg.lr, betas=betas)
        self.optD = torch.optim.Adam(self.D.parameters(), cfg.lr_d or cfg.lr, betas=betas)
        images = datasets.load(cfg.data, self.net.channels, self.net.image_size, seed=cfg.seed)
        self.dataset_size = len(images)
        self.batches = Batches(images, cfg.batch_size, cfg.seed)
        self.zgen = torch.Generator().manual_seed(cfg.seed + 1)
        self.policy = parse_policy(cfg.augment)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2)  # DiffAugment's parameters
        self.augment_p = 0.0 if cfg.ada_target else 1.0  # each transform's probability per image (ADA adapts it)
        self.lecam_anchors: torch.Tensor | None = None  # LeCam's moving averages of D's mean logit on real, fake
        # The fixed sample batch: the latents of `dcgan-deploy generate -n 64 --seed 0`.
        self.fixed_z = torch.from_numpy(latents(64, 0, self.net.latent_dim, self.net.latent_prior))
        self.step = 0
        self.saved_step: int | None = None  # the step of the run folder's checkpoint (None: it has none yet)
        self._exported: tuple[int, GeneratorNet | None] = (-1, None)
        self.average: dict | None = None  # {"sum": float64 copies of the averaged weights, "count": how many}

    # ---- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "train_config": dataclasses.asdict(self.cfg),
            "net_config": self.net.to_dict(),
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "optG": self.optG.state_dict(), "optD": self.optD.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "batches": self.batches.state_dict(),
            "augment_p": self.augment_p,
            "lecam_anchors": self.lecam_anchors,
            "average": self.average,
            "rng": {"torch": torch.get_rng_state(), "z": self.zgen.get_state(), "augment": self.aug_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.empty(0)},
        }

    def load_state_dict(self, s: dict) -> None:
        self.G.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
        self.optG.load_state_dict(s["optG"])
        self.optD.load_state_dict(s["optD"])
        if self.ema is not None:
            if s["ema"]:
                self.ema.load_state_dict(s["ema"])
            else:
                self.ema.load_state_dict(self.G.state_dict())
        self.batches.load_state_dict(s["batches"])
        self.augment_p = float(s.get("augment_p", self.augment_p))
        anchors = s.get("lecam_anchors")
        self.lecam_anchors = None if anchors is None else anchors.to(self.device)
        average = s.get("average")  # absent in states written before weight averaging existed
        if average is not None:
            sums, count = check_average(average, self.G, self.run_dir / "train_state.pt")
            average = {"sum": [t.to(self.device, torch.float64) for t in sums], "count": count}
        self.average = average
        torch.set_rng_state(s["rng"]["torch"])
        self.zgen.set_state(s["rng"]["z"])
        if "augment" in s["rng"]:
            self.aug_gen.set_state(s["rng"]["augment"])
        if self.device.type == "cuda" and s["rng"]["cuda"].numel():
            torch.cuda.set_rng_state(s["rng"]["cuda"], self.device)
        self.step = int(s["step"])
        self.saved_step = self.step

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, progress: bool = True, **overrides) -> "Trainer":
        """Continue the run in ``run_dir``; ``overrides`` may change steps, device and cadences."""
        run_dir = Path(run_dir)
        state = load_torch(run_dir / "train_state.pt")
        if state.get("format") != STATE_FORMAT or "train_config" not in state:
            raise CheckpointError(f"{run_dir / 'train_state.pt'}: not a dcgan-deploy training state")
        allowed = {"steps", "device", "sample_every", "checkpoint_every", "log_every", "average_start"}
        changed = {k for k, v in overrides.items() if v is not None and k not in allowed}
        if changed:
            raise ValueError(f"cannot change {', '.join(sorted(changed))} when resuming (only {', '.join(sorted(allowed))})")
        step = state.get("step")
        start = overrides.get("average_start")
        recorded = state["train_config"] if isinstance(state["train_config"], dict) else {}
        if start is not None and start != recorded.get("average_start", 0):
            # Averaging reads the weights and changes nothing in training, so it may be switched on or moved
            # for the steps still to come; not once it has begun.
            if state.get("average") is not None:
                raise ValueError(f"{run_dir} has averaged its generator since step "
                                 f"{recorded.get('average_start')}; average_start cannot change now")
            if start and isinstance(step, int) and start <= step:
                raise ValueError(f"average_start must be after the checkpoint's step ({step}), got {start}")
        cfg = TrainConfig.from_dict(state["train_config"], source=str(run_dir / "train_state.pt"), **overrides)
        if isinstance(step, int) and step >= cfg.steps:
            raise ValueError(f"{run_dir} is at step {step} already; give --steps above {step} to train further")
        trainer = cls(cfg, run_dir, progress)
        try:
            trainer.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{run_dir / 'train_state.pt'}: does not fit its own recipe ({first_line(e)})") from None
        return trainer

    def save(self) -> None:
        """Checkpoint (rank 0 only): train state, generator, config. Each file atomically."""
        if not self.dist.main:
            return
        save_train_state(self.state_dict(), self.run_dir / "train_state.pt")
        gen = self.export_generator()
        extra = {"train_step": str(self.step), "dataset": self.cfg.data, "ema": str(self.cfg.ema)}
        if self.average is not None:
            extra["average"] = average_note(self.average["count"], self.cfg.average_every, self.cfg.average_start)
        save_generator(gen.state_dict(), self.net, self.run_dir / "generator.safetensors", extra)

    def export_generator(self) -> GeneratorNet:
        """The generator to deploy: the mean of the averaged weights once averaging has begun, else the EMA
        weights when EMA is on (either with BatchNorm re-estimated), else G."""
        if self.average is None and self.ema is None:
            return self.G
        if self._exported[0] != self.step:  # the sample grid and the checkpoint share one re-estimation
            gen = copy.deepcopy(self.ema if self.ema is not None else self.G)
            if self.average is not None:
                load_mean(gen, self.average["sum"], self.average["count"])
            recompute_bn_stats(gen, seed=self.cfg.seed)
            self._exported = (self.step, gen.eval())
        return self._exported[1]

    @torch.no_grad()
    def accumulate_average(self) -> None:
        """At the sampled steps (from ``average_start``, every ``average_every``), add the weights the run
        would deploy (the EMA's, or G's) to the mean, in float64."""
        cfg = self.cfg
        if not cfg.average_start or self.step < cfg.average_start or (self.step - cfg.average_start) % cfg.average_every:
            return
        weights = (self.ema if self.ema is not None else self.G).parameters()
        source = [p.detach().to(torch.float64, copy=True) for p in weights]
        if self.average is None:
            self.average = {"sum": source, "count": 1}
        else:
            torch._foreach_add_(self.average["sum"], source)
            self.average["count"] += 1

    def _truncate_log(self) -> None:
        """On resume, drop log lines past the checkpoint (written by a run that was then killed). A torn last
        line (a write cut short by a crash or a full disk) is dropped too; any other unreadable line is an
        error naming the file and the line."""
        log = self.run_dir / "log.jsonl"
        if not log.exists():
            return
        lines = [(i, line) for i, line in enumerate(log.read_text(errors="replace").splitlines(), 1) if line.strip()]
        rows = []
        for k, (number, line) in enumerate(lines):
            try:
                row = json.loads(line)
            except ValueError:
                if k == len(lines) - 1:  # torn by the crash that ended the last run
                    logging.getLogger(__name__).warning("%s: dropped a torn last line (%d)", log, number)
                    continue
                raise CheckpointError(f"{log}: line {number} is not valid JSON; fix or remove it, then resume") from None
            if not isinstance(row, dict) or not isinstance(row.get("step", 0), int) \
                    or not isinstance(row.get("resumed_from", 0), int):
                raise CheckpointError(f"{log}: line {number} is not a log record; fix or remove it, then resume")
            rows.append(row)
        # rows past the checkpoint, and resume markers at or past it, belong to the discarded stretch
        keep = [r for r in rows if "done" not in r
                and (r["step"] <= self.step if "step" in r else r.get("resumed_from", 0) < self.step)]
        if self.step:
            keep.append({"resumed_from": self.step})
        write_bytes(log, "".join(json.dumps(r) + "\n" for r in keep).encode())

    @torch.no_grad()
    def sample_grid(self) -> None:
        gen = self.export_generator()
        was_training = gen.training
        gen.eval()
        images = gen(self.fixed_z.to(self.device)).float().cpu().numpy()
        gen.train(was_training)
        (self.run_dir / "samples").mkdir(exist_ok=True)
        save_png(grid(to_uint8(images)), self.run_dir / "samples" / f"step_{self.step:06d}.png")

    # ---- the loop -------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, dev = self.cfg, self.device
        real = self.batches.next(self.dist.rank, self.dist.world).to(dev, non_blocking=True,
                                                                   memory_format=self.memory_format)
        z = sample_prior(cfg.batch_size * self.dist.world, self.net, self.zgen)
        z = z[self.dist.rank * cfg.batch_size:(self.dist.rank + 1) * cfg.batch_size].to(dev)

        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp)
        lr, lr_d = cfg.lr_at(self.step), cfg.lr_d_at(self.step)
        for opt, rate in ((self.optD, lr_d), (self.optG, lr)):
            for group in opt.param_groups:
                group["lr"] = rate

        # (1) Update D: tell real from fake (both augmented alike when `augment` is set)
        with autocast:
            fake = self.G_train(z)
            d_real, d_fake = self.discriminate(real, fake.detach())
            d_loss = self.d_loss(d_real, d_fake)
        self.optD.zero_grad(set_to_none=True)
        (d_loss + cfg.lecam * self.lecam_penalty(d_real, d_fake) if cfg.lecam else d_loss).backward()
        if cfg.r1 and self.step % cfg.r1_every == 0:
            self.r1_penalty(real).backward()
        self.optD.step()

        # (2) Update G: make D call its images real. Through the plain D: its weights take no gradient
        # here, and under DDP nothing of D's is reduced.
        self.optG.zero_grad(set_to_none=True)
        self.D.requires_grad_(False)
        with autocast:
            if cfg.joint_batch:  # normalised with a real batch, as in D's update; only the fakes' logits count
                g_out = self.D(self.augmented(torch.cat([real, fake])))[len(real):]
            else:
                g_out = self.D(self.augmented(fake))
            g_loss = self.g_loss(g_out)
        g_loss.backward()
        self.D.requires_grad_(True)
        self.optG.step()

        if self.ema is not None:
            update_ema(self.ema, self.G, self.cfg.ema)
        # One host sync per step: the losses, D's mean outputs, the finiteness of every weight and ADA's
        # overfitting signal (the share of real images D calls real, minus those it calls fake), read together.
        values = [d_loss.detach().float(), g_loss.detach().float(), torch.sigmoid(d_real).mean().float(),
                  torch.sigmoid(d_fake).mean().float(), all_finite(self.G, self.D).float()]
        if cfg.ada_target:
            values.append(self.dist.mean(torch.sign(d_real.detach().float()).mean()))
        stats = torch.stack(values).tolist()
        record = {**dict(zip(("d_loss", "g_loss", "d_real", "d_fake"), stats[:4])), "finite": stats[4] == 1.0, "lr": lr}
        if cfg.ada_target:  # the strength this step trained with and the signal it saw; then the next step's
            record["augment_p"], record["ada_signal"] = self.augment_p, stats[5]
            self.adapt_augmentation(stats[5])
        return record

    def top_k_count(self) -> int:
        """Top-k training: how many of this rank's generated images G learns from at this step, the batch
        times TOPK_DECAY ** (epochs of the data seen so far), but not under ``top_k`` of it, rounded up (so at
        least one: ``top_k`` is above 0 when on)."""
        epochs = self.step * self.cfg.batch_size * self.dist.world / self.dataset_size
        return math.ceil(max(self.cfg.top_k, TOPK_DECAY ** epochs) * self.cfg.batch_size)

    def adapt_augmentation(self, signal: float) -> None:
        """ADA: p one step (batch / ada_images) up while the overfitting signal is above the target, down
        while below, within [0, 1]."""
        cfg = self.cfg
        direction = (signal > cfg.ada_target) - (signal < cfg.ada_target)
        self.augment_p = min(1.0, max(0.0, self.augment_p + direction * cfg.batch_size * self.dist.world
                                      / cfg.ada_images))

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        """D's view of a batch: DiffAugment'ed when the recipe says so (see ``augment``)."""
        return augment(x, self.policy, self.aug_gen, self.augment_p) if self.policy else x

    def discriminate(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D's logits for the real and the fake batch. A D without BatchNorm or a minibatch standard-deviation
        layer sees both in one forward (each logit depends on its own image only); with either, each batch
        normalises by (or measures) its own statistics, as in the Radford et al. recipe, so they go through
        separately, unless ``joint_batch`` has BatchNorm normalise them together."""
        if self.D.mixes_batch and not self.cfg.joint_batch:
            return self.D_train(self.augmented(real)), self.D_train(self.augmented(fake))
        logits = self.D_train(self.augmented(torch.cat([real, fake])))
        return logits[:len(real)], logits[len(real):]

    def d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "hinge":
            return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))

    def g_loss(self, g_out: torch.Tensor) -> torch.Tensor:
        """G's loss on D's logits for its images: -D(G(z)) for hinge, else the non-saturating loss; with
        ``top_k``, over only the ``top_k_count()`` images D scores highest."""
        if self.cfg.top_k:
            g_out = g_out.topk(self.top_k_count()).values
        return -g_out.mean() if self.cfg.loss == "hinge" else F.binary_cross_entropy_with_logits(g_out, torch.ones_like(g_out))

    def lecam_penalty(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        """LeCam regularisation (Tseng et al. 2021), in fp32: E[relu(D(x) - a_fake)^2] + E[relu(a_real - D(G(z)))^2],
        where a_real and a_fake are moving averages (decay ``LECAM_DECAY``) of D's mean logit on real and on
        generated images, updated with this batch first (the first batch sets them; averaged over the ranks).
        It keeps D's outputs from running apart on the few images it sees again and again."""
        means = self.dist.mean(torch.stack([d_real.detach().float().mean(), d_fake.detach().float().mean()]))
        self.lecam_anchors = means if self.lecam_anchors is None else torch.lerp(self.lecam_anchors, means,
                                                                                 1 - LECAM_DECAY)
        a_real, a_fake = self.lecam_anchors
        return F.relu(d_real.float() - a_fake).pow(2).mean() + F.relu(a_real - d_fake.float()).pow(2).mean()

    def r1_penalty(self, real: torch.Tensor) -> torch.Tensor:
        """R1 (Mescheder et al.): gamma / 2 * E ||grad_x D(x)||^2 on (augmented) real images, in fp32, scaled
        by ``r1_every`` because it is applied only every ``r1_every`` steps."""
        x = self.augmented(real).detach().requires_grad_(True)
        grad, = torch.autograd.grad(self.D_train(x).sum(), x, create_graph=True)
        return self.cfg.r1 / 2 * self.cfg.r1_every * grad.pow(2).flatten(1).sum(1).mean()

    def train(self) -> dict:
        """Train up to ``cfg.steps`` (the run's total), checkpointing as configured; returns the last record.

        Owns the run's lifecycle: prepares the run folder (stale temp files of a killed save swept, the
        log cut back to the checkpoint), trains, checks that every rank holds the same weights, and
        tears the process group down however the run ends."""
        ok, lock = False, None
        try:
            if self.dist.main:
                lock = self._lock_folder()  # before anything in the folder changes
                self._prepare_folder()
            record = self._loop()
            ok = True
            return record
        finally:
            if lock is not None:
                lock.close()
            self.dist.close(ok)

    def _lock_folder(self):
        """An exclusive lock on the run folder for as long as this process trains in it: a second ``train`` of
        the same folder (a ``--resume`` twice, say) gets one line and changes nothing."""
        import fcntl
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.run_dir / ".lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise ValueError(f"{self.run_dir} is being trained by another process; nothing was changed "
                             "(wait for it to end, or stop it)") from None
        return lock

    def _kept(self) -> str:
        """What of the run survives a failure now, in words."""
        if self.saved_step is None:
            return f"no checkpoint had been written in {self.run_dir} yet, so there is none to resume from"
        return f"the last good checkpoint (step {self.saved_step}) in {self.run_dir} was kept"

    def _prepare_folder(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.run_dir.glob(".*.part"), *self.run_dir.glob(".tmp*")]:  # left by a save that was killed
            if stale.is_file():
                stale.unlink()
        write_bytes(self.run_dir / "config.json", (json.dumps(dataclasses.asdict(self.cfg), indent=2) + "\n").encode())
        self._truncate_log()

    def _loop(self) -> dict:
        cfg = self.cfg
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.arch, unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        record: dict = {}
        t0, seen = time.perf_counter(), 0
        with bar, open(self.run_dir / "log.jsonl", "a") if self.dist.main else contextlib.nullcontext() as logf:
            while self.step < cfg.steps:
                losses = self.train_step()
                self.step += 1
                seen += cfg.batch_size * self.dist.world
                finite = losses.pop("finite")
                if not (math.isfinite(losses["d_loss"]) and math.isfinite(losses["g_loss"]) and finite):
                    raise DivergenceError(
                        f"training diverged at step {self.step} (d_loss={losses['d_loss']}, g_loss={losses['g_loss']}, "
                        f"or non-finite weights); {self._kept()}")
                rate = seen / (time.perf_counter() - t0)
                record = {"step": self.step, **{k: round(v, 5) for k, v in losses.items() if k != "lr"},
                          "lr": float(f"{losses['lr']:.4g}"), "img_per_s": round(rate, 1)}
                if self.dist.main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    logf.write(json.dumps(record) + "\n")
                    logf.flush()
                bar.set_postfix(d=f"{losses['d_loss']:.3f}", g=f"{losses['g_loss']:.3f}", img_s=f"{rate:.0f}")
                bar.update(1)
                self.accumulate_average()
                if self.dist.main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    self.sample_grid()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    try:
                        self.save()
                    except OSError as e:
                        raise OSError(f"could not write the checkpoint of step {self.step} ({e.strerror or e}); "
                                      f"{self._kept()}") from None
                    self.saved_step = self.step
        self.dist.sync_buffers(self.G)
        record["ranks"] = self.dist.gather_digests(weights_digest(self.G))
        if len(set(record["ranks"])) != 1:
            raise RuntimeError(f"ranks disagree on the generator weights: {record['ranks']}")
        if self.dist.main:
            with open(self.run_dir / "log.jsonl", "a") as logf:
                logf.write(json.dumps({"done": True, **record}) + "\n")
        return record


def open_run(recipe: str | os.PathLike | None = None, resume_dir: str | os.PathLike | None = None,
             run_dir: str | os.PathLike | None = None, progress: bool = True, **overrides) -> Trainer:
    """A fresh run of ``recipe`` in ``run_dir`` (default ``runs/<recipe name>``), or the run in ``resume_dir``
    continued. ``overrides``: data, steps, batch_size, device, seed, threads, average_start (a resumed run takes
    steps, device and average_start only)."""
    if resume_dir:
        if recipe or run_dir or any(overrides.get(k) is not None for k in ("data", "batch_size", "seed", "threads")):
            raise ValueError("with --resume only --steps, --device and --average-start may be given "
                             "(the recipe is in the checkpoint)")
        return Trainer.resume(resume_dir, progress=progress, steps=overrides.get("steps"),
                              device=overrides.get("device"), average_start=overrides.get("average_start"))
    if not recipe:
        raise ValueError("give a RECIPE file, or --resume RUN_DIR")
    cfg = TrainConfig.from_file(recipe, **overrides)
    run_dir = Path(run_dir or Path("runs") / Path(recipe).stem)
    if (run_dir / "train_state.pt").exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick --out")
    return Trainer(cfg, run_dir, progress=progress)
