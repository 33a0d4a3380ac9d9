"""The training loop (torch): non-saturating GAN loss, Adam, crash-safe and exactly resumable.

A run directory holds ``train_state.pt`` (resume), ``generator.safetensors`` (export),
``config.json``, ``log.jsonl`` (losses) and ``samples/step_NNNNNN.png`` (a grid from a
fixed latent batch, the same latents as ``dcgan-deploy generate -n 64 --seed 0``).

Data-parallel: launched by ``torchrun`` (RANK/WORLD_SIZE set), every rank draws the
same global batch and takes its own slice; gradients are averaged with all-reduce and
BatchNorm buffers broadcast from rank 0, so all ranks hold identical weights. Only
rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import data as datasets
from .checkpoint import STATE_FORMAT, CheckpointError, load_torch, save_generator, save_train_state
from .files import write_bytes
from .images import grid, save_png, to_uint8
from .latent import latents
from .nets import Discriminator, Generator, NetConfig, sample_prior


class DivergenceError(RuntimeError):
    """Losses or weights became non-finite; the last good checkpoint was kept."""


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
    # without AMX bf16 runs emulated and slower, so "auto" keeps fp32. "on" / "off" force them.
    amp: str = "auto"
    channels_last: str = "auto"
    net: dict = field(default_factory=dict)  # NetConfig overrides (g_width, d_width, channels, latent_dim, ...)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        """Read a TOML recipe; keyword overrides (``None`` = keep) win."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"recipe not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from None
        return cls.from_dict(raw, source=str(path), **overrides)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config", **overrides) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(sorted(unknown))}")
        if "arch" not in raw:
            raise ValueError(f"{source}: the recipe must name an 'arch'")
        cfg = cls(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})
        cfg.check()
        return cfg

    def check(self) -> None:
        for name in ("steps", "batch_size", "sample_every", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("lr_decay_start", "lr_decay_end"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if (self.lr_decay_start or self.lr_decay_end) and not self.lr_decay_end > self.lr_decay_start:
            raise ValueError(f"lr_decay_end ({self.lr_decay_end}) must be after lr_decay_start ({self.lr_decay_start})")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("amp", "channels_last"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise ValueError(f"{name} must be auto, on or off, got {getattr(self, name)!r}")
        self.net_config()  # validates arch and net overrides

    def net_config(self) -> NetConfig:
        return NetConfig.for_arch(self.arch, **self.net)

    def lr_at(self, step: int) -> float:
        """The learning rate of the update that step ``step`` (0-based) takes."""
        if not self.lr_decay_end or step < self.lr_decay_start:
            return self.lr
        return self.lr * max(0.0, (self.lr_decay_end - step) / (self.lr_decay_end - self.lr_decay_start))


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

    def average_grads(self, module: nn.Module) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def sync_buffers(self, module: nn.Module) -> None:
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
            dist.destroy_process_group()

    def gather_digests(self, digest: str) -> list[str]:
        """Every rank's digest (to check that all ranks hold the same weights)."""
        if self.world == 1:
            return [digest]
        import torch.distributed as dist
        out: list = [None] * self.world
        dist.all_gather_object(out, digest)
        return out


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


@torch.no_grad()
def recompute_bn_stats(gen: Generator, batches: int = 16, batch_size: int = 256, seed: int = 0) -> None:
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
    for _ in range(batches):
        gen(sample_prior(batch_size, gen.cfg, g).to(device))
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)


class Trainer:
    """One training run in ``run_dir``; ``Trainer.resume(run_dir)`` continues it exactly."""

    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike, progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.net = cfg.net_config()
        self.device = pick_device(cfg.device)
        self.dist = Dist.setup(self.device)
        self.progress = progress and self.dist.main
        torch.manual_seed(cfg.seed)
        self.G = Generator(self.net).to(self.device)
        self.D = Discriminator(self.net).to(self.device)
        fast_bf16 = self.device.type == "cuda" or cpu_has_amx()
        self.amp = cfg.amp == "on" or (cfg.amp == "auto" and fast_bf16)
        self.memory_format = torch.channels_last if cfg.channels_last == "on" or (
            cfg.channels_last == "auto" and fast_bf16) else torch.contiguous_format
        self.G.to(memory_format=self.memory_format)
        self.D.to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.G).eval() if cfg.ema else None
        betas = (cfg.beta1, cfg.beta2)
        self.optG = torch.optim.Adam(self.G.parameters(), cfg.lr, betas=betas)
        self.optD = torch.optim.Adam(self.D.parameters(), cfg.lr, betas=betas)
        images = datasets.load(cfg.data, self.net.channels, self.net.image_size, seed=cfg.seed)
        self.dataset_size = len(images)
        self.batches = datasets.Batches(images, cfg.batch_size, cfg.seed)
        self.zgen = torch.Generator().manual_seed(cfg.seed + 1)
        # The fixed sample batch: the latents of `dcgan-deploy generate -n 64 --seed 0`.
        self.fixed_z = torch.from_numpy(latents(64, 0, self.net.latent_dim, self.net.latent_prior))
        self.step = 0
        self._exported: tuple[int, Generator | None] = (-1, None)

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
            "rng": {"torch": torch.get_rng_state(), "z": self.zgen.get_state(),
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
        torch.set_rng_state(s["rng"]["torch"])
        self.zgen.set_state(s["rng"]["z"])
        if self.device.type == "cuda" and s["rng"]["cuda"].numel():
            torch.cuda.set_rng_state(s["rng"]["cuda"], self.device)
        self.step = int(s["step"])

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, progress: bool = True, **overrides) -> "Trainer":
        """Continue the run in ``run_dir``; ``overrides`` may change steps, device and cadences."""
        run_dir = Path(run_dir)
        state = load_torch(run_dir / "train_state.pt")
        if state.get("format") != STATE_FORMAT or "train_config" not in state:
            raise CheckpointError(f"{run_dir / 'train_state.pt'}: not a dcgan-deploy training state")
        allowed = {"steps", "device", "sample_every", "checkpoint_every", "log_every"}
        changed = {k for k, v in overrides.items() if v is not None and k not in allowed}
        if changed:
            raise ValueError(f"cannot change {', '.join(sorted(changed))} when resuming (only {', '.join(sorted(allowed))})")
        cfg = TrainConfig.from_dict(state["train_config"], **overrides)
        trainer = cls(cfg, run_dir, progress)
        trainer.load_state_dict(state)
        return trainer

    def save(self) -> None:
        """Checkpoint (rank 0 only): train state, generator, config. Each file atomically."""
        if not self.dist.main:
            return
        save_train_state(self.state_dict(), self.run_dir / "train_state.pt")
        gen = self.export_generator()
        save_generator(gen.state_dict(), self.net, self.run_dir / "generator.safetensors",
                       {"train_step": str(self.step), "dataset": self.cfg.data, "ema": str(self.cfg.ema)})

    def export_generator(self) -> Generator:
        """The generator to deploy: the EMA weights (BatchNorm re-estimated) when EMA is on."""
        if self.ema is None:
            return self.G
        if self._exported[0] != self.step:  # the sample grid and the checkpoint share one re-estimation
            gen = copy.deepcopy(self.ema)
            recompute_bn_stats(gen, seed=self.cfg.seed)
            self._exported = (self.step, gen.eval())
        return self._exported[1]

    def _truncate_log(self) -> None:
        """On resume, drop log lines past the checkpoint (written by a run that was then killed)."""
        log = self.run_dir / "log.jsonl"
        if not log.exists():
            return
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
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
        ones = torch.ones(cfg.batch_size, device=dev)
        zeros = torch.zeros(cfg.batch_size, device=dev)

        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp)
        lr = cfg.lr_at(self.step)
        for opt in (self.optD, self.optG):
            for group in opt.param_groups:
                group["lr"] = lr

        # (1) Update D: maximise log D(x) + log(1 - D(G(z)))
        with autocast:
            fake = self.G(z)
            d_real = self.D(real)
            d_fake = self.D(fake.detach())
            d_loss = F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(d_fake, zeros)
        self.optD.zero_grad(set_to_none=True)
        d_loss.backward()
        self.dist.average_grads(self.D)
        self.optD.step()

        # (2) Update G: maximise log D(G(z)) (the non-saturating loss)
        self.optG.zero_grad(set_to_none=True)
        with autocast:
            g_loss = F.binary_cross_entropy_with_logits(self.D(fake), ones)
        g_loss.backward()
        self.dist.average_grads(self.G)
        self.optG.step()

        self.dist.sync_buffers(self.G)
        self.dist.sync_buffers(self.D)
        if self.ema is not None:
            update_ema(self.ema, self.G, self.cfg.ema)
        # One host sync per step: the losses, D's mean outputs and the finiteness of every weight, read together.
        stats = torch.stack([d_loss.detach().float(), g_loss.detach().float(), torch.sigmoid(d_real).mean().float(),
                             torch.sigmoid(d_fake).mean().float(), all_finite(self.G, self.D).float()]).tolist()
        return {**dict(zip(("d_loss", "g_loss", "d_real", "d_fake"), stats[:4])), "finite": stats[4] == 1.0, "lr": lr}

    def run(self) -> dict:
        """Train up to ``cfg.steps`` (the run's total), checkpointing as configured; returns the last record."""
        cfg = self.cfg
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.glob(".*.part"):  # left by a save that was killed
                stale.unlink()
            (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
            self._truncate_log()
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
                        f"or non-finite weights); the last good checkpoint in {self.run_dir} was kept")
                rate = seen / (time.perf_counter() - t0)
                record = {"step": self.step, **{k: round(v, 5) for k, v in losses.items() if k != "lr"},
                          "lr": float(f"{losses['lr']:.4g}"), "img_per_s": round(rate, 1)}
                if self.dist.main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    logf.write(json.dumps(record) + "\n")
                    logf.flush()
                bar.set_postfix(d=f"{losses['d_loss']:.3f}", g=f"{losses['g_loss']:.3f}", img_s=f"{rate:.0f}")
                bar.update(1)
                if self.dist.main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    self.sample_grid()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
        record["ranks"] = self.dist.gather_digests(weights_digest(self.G))
        if len(set(record["ranks"])) != 1:
            raise RuntimeError(f"ranks disagree on the generator weights: {record['ranks']}")
        if self.dist.main:
            with open(self.run_dir / "log.jsonl", "a") as logf:
                logf.write(json.dumps({"done": True, **record}) + "\n")
        return record

