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

Data-parallel under ``torchrun``: see ``parallel``. The recipe is ``recipe.TrainConfig``; the losses
and D's regulariser are ``losses``'.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .augment import augment, parse_policy
from .checkpoint import (STATE_FORMAT, CheckpointError, average_note, check_average, load_mean, load_torch,
                         save_generator, save_train_state, truncate_log)
from .files import write_bytes
from .images import grid, save_png, to_uint8
from .latent import latents, seed_labels
from .runtime import first_line
from .losses import LOSSES, r1_penalty
from .nets import DiscriminatorNet, GeneratorNet, recompute_bn_stats, sample_prior
from .parallel import Batches, Dist, cpu_has_amx, pick_device, set_determinism, weights_digest
from .recipe import TrainConfig, conditioned, to_toml


class DivergenceError(RuntimeError):
    """Losses or weights became non-finite; the run's last checkpoint, if it has one, was kept."""


@torch.no_grad()
def all_finite(*modules: nn.Module) -> torch.Tensor:
    """A 0-d bool tensor on the modules' device: are all their floating-point tensors finite?
    Computed without a host sync (one concatenation), so a GPU step waits for nothing."""
    tensors = [t.reshape(-1) for m in modules for t in m.state_dict().values() if t.is_floating_point()]
    return torch.isfinite(torch.cat(tensors)).all()


def with_classes(out, aux: bool) -> tuple:
    """D's output as (logits, class logits or None), whether or not it was asked for its classes."""
    return out if aux else (out, None)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


class Trainer:
    """One training run in ``run_dir``; ``Trainer.resume(run_dir)`` continues it exactly."""

    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike, progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        run, d = cfg.run, cfg.discriminator
        self.net, self.classes, self.data = conditioned(cfg)
        self.device = pick_device(run.device)
        if self.device.type == "cuda" and run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; before CUDA work
        run.threads = set_determinism(run.threads, run.deterministic, self.device)
        self.dist = Dist.setup(self.device)
        self.progress = progress and self.dist.main
        torch.manual_seed(cfg.seed)
        self.G = GeneratorNet(self.net).to(self.device)
        self.D = DiscriminatorNet(self.net, spectral_norm=d.spectral_norm,
                                  classifier=bool(d.classifier and self.classes)).to(self.device)
        fast_bf16 = self.device.type == "cuda" or cpu_has_amx()
        self.amp = run.amp == "on" or (run.amp == "auto" and fast_bf16)
        self.memory_format = torch.channels_last if run.channels_last == "on" or (
            run.channels_last == "auto" and fast_bf16) else torch.contiguous_format
        self.G.to(memory_format=self.memory_format)
        self.D.to(memory_format=self.memory_format)
        # DDP under torchrun; an auxiliary classifier's head takes no part in R1's pass (DDP is told so)
        self.G_train, self.D_train = self.dist.wrap(self.G), self.dist.wrap(self.D, unused=bool(d.classifier))
        self.ema = copy.deepcopy(self.G).eval() if cfg.generator.ema else None
        o = cfg.optim
        self.optG = torch.optim.Adam(self.G.parameters(), o.lr, betas=(o.beta1, o.beta2))
        self.optD = torch.optim.Adam(self.D.parameters(), o.lr_d or o.lr, betas=(o.beta1, o.beta2))
        self.loss = LOSSES[d.loss]
        self.batches = Batches(self.data.images, cfg.batch_size, cfg.seed,
                               self.data.labels if self.classes else None)
        self.zgen = torch.Generator().manual_seed(cfg.seed + 1)
        self.policy = parse_policy(d.augment)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2)  # DiffAugment's parameters
        self.augment_p = 0.0 if d.ada_target else 1.0  # each transform's probability per image (ADA adapts it)
        # The fixed sample batch: the latents of `dcgan-deploy generate -n 64 --seed 0`.
        self.fixed_z = torch.from_numpy(latents(64, 0, self.net.latent_dim, self.net.latent_prior))
        self.fixed_labels = torch.from_numpy(seed_labels(64, 0, len(self.classes))) if self.classes else None
        self.step = 0
        self.saved_step: int | None = None  # the step of the run folder's checkpoint (None: it has none yet)
        self._exported: tuple[int, GeneratorNet | None] = (-1, None)
        self.average: dict | None = None  # {"sum": float64 copies of the averaged weights, "count": how many}

    # ---- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "train_config": self.cfg.to_dict(),
            "net_config": self.net.to_dict(),
            "classes": list(self.classes),
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "optG": self.optG.state_dict(), "optD": self.optD.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "batches": self.batches.state_dict(),
            "augment_p": self.augment_p,
            "average": self.average,
            "rng": {"torch": torch.get_rng_state(), "z": self.zgen.get_state(), "augment": self.aug_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.empty(0)},
        }

    def load_state_dict(self, s: dict) -> None:
        if list(s.get("classes", [])) != list(self.classes):
            raise ValueError(f"the data's classes are now {list(self.classes)[:10]}, the run's were "
                             f"{list(s.get('classes', []))[:10]}")
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
        step, start, source = state.get("step"), overrides.get("average_start"), str(run_dir / "train_state.pt")
        recorded = TrainConfig.from_dict(state["train_config"], source=source).generator.average_start
        if start is not None and start != recorded:
            # Averaging reads the weights and changes nothing in training, so it may be switched on or moved
            # for the steps still to come; not once it has begun.
            if state.get("average") is not None:
                raise ValueError(f"{run_dir} has averaged its generator since step {recorded}; "
                                 "average_start cannot change now")
            if start and isinstance(step, int) and start <= step:
                raise ValueError(f"average_start must be after the checkpoint's step ({step}), got {start}")
        cfg = TrainConfig.from_dict(state["train_config"], source=source, **overrides)
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
        g = self.cfg.generator
        extra = {"train_step": str(self.step), "dataset": self.cfg.data, "ema": str(g.ema)}
        if self.classes:
            extra["classes"] = json.dumps(list(self.classes))
        if self.average is not None:
            extra["average"] = average_note(self.average["count"], g.average_every, g.average_start)
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
        g = self.cfg.generator
        if not g.average_start or self.step < g.average_start or (self.step - g.average_start) % g.average_every:
            return
        weights = (self.ema if self.ema is not None else self.G).parameters()
        source = [p.detach().to(torch.float64, copy=True) for p in weights]
        if self.average is None:
            self.average = {"sum": source, "count": 1}
        else:
            torch._foreach_add_(self.average["sum"], source)
            self.average["count"] += 1

    @torch.no_grad()
    def sample_grid(self) -> None:
        gen = self.export_generator()
        was_training = gen.training
        gen.eval()
        z = self.fixed_z.to(self.device)
        images = (gen(z, self.fixed_labels.to(self.device)) if self.classes else gen(z)).float().cpu().numpy()
        gen.train(was_training)
        (self.run_dir / "samples").mkdir(exist_ok=True)
        save_png(grid(to_uint8(images)), self.run_dir / "samples" / f"step_{self.step:06d}.png")

    # ---- the loop -------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, dev, d = self.cfg, self.device, self.cfg.discriminator
        real, y_real = self.batches.next_labelled(self.dist.rank, self.dist.world)
        real = real.to(dev, non_blocking=True, memory_format=self.memory_format)
        mine = slice(self.dist.rank * cfg.batch_size, (self.dist.rank + 1) * cfg.batch_size)
        z = sample_prior(cfg.batch_size * self.dist.world, self.net, self.zgen)[mine].to(dev)
        y_fake = None
        if self.classes:  # G's labels: uniform over the classes, from the latents' generator
            y_real = y_real.to(dev)
            y_fake = torch.randint(len(self.classes), (cfg.batch_size * self.dist.world,), generator=self.zgen)[mine].to(dev)

        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp)
        lr, lr_d = cfg.lr_at(self.step), cfg.lr_d_at(self.step)
        for opt, rate in ((self.optD, lr_d), (self.optG, lr)):
            for group in opt.param_groups:
                group["lr"] = rate

        # (1) Update D: tell real from fake (both augmented alike when `augment` is set)
        with autocast:
            fake = self.G_train(z, y_fake) if self.classes else self.G_train(z)
            d_real, d_fake, real_classes = self.discriminate(real, fake.detach(), y_real, y_fake)
            d_loss = self.loss.d(d_real, d_fake)
            if d.classifier:  # the auxiliary classifier learns the real images' classes
                d_class = F.cross_entropy(real_classes, y_real)
                d_loss = d_loss + d.classifier * d_class
        self.optD.zero_grad(set_to_none=True)
        d_loss.backward()
        if d.r1 and self.step % d.r1_every == 0:
            r1_penalty(lambda x: self.D_train(x, y_real), self.augmented(real), d.r1, d.r1_every).backward()
        self.optD.step()

        # (2) Update G: make D call its images real. Through the plain D: its weights take no gradient
        # here, and under DDP nothing of D's is reduced.
        self.optG.zero_grad(set_to_none=True)
        self.D.requires_grad_(False)
        with autocast:
            aux = bool(d.classifier)
            d_on_fake, fake_classes = with_classes(self.D(self.augmented(fake), y_fake, classes=aux), aux)
            g_loss = self.loss.g(d_on_fake)  # D's logits on G's images
            if aux:  # ... and G's images are pushed towards being read as their labels
                g_loss = g_loss + d.classifier * F.cross_entropy(fake_classes, y_fake)
        g_loss.backward()
        self.D.requires_grad_(True)
        self.optG.step()

        if self.ema is not None:
            update_ema(self.ema, self.G, cfg.generator.ema)
        # One host sync per step: the losses, D's mean outputs, the finiteness of every weight and ADA's
        # overfitting signal (the share of real images D calls real, minus those it calls fake), read together.
        values = [d_loss.detach().float(), g_loss.detach().float(), torch.sigmoid(d_real).mean().float(),
                  torch.sigmoid(d_fake).mean().float(), all_finite(self.G, self.D).float()]
        if d.classifier:
            values.append(d_class.detach().float())
        if d.ada_target:
            values.append(self.dist.mean(torch.sign(d_real.detach().float()).mean()))
        stats = torch.stack(values).tolist()
        record = {**dict(zip(("d_loss", "g_loss", "d_real", "d_fake"), stats[:4])), "finite": stats[4] == 1.0, "lr": lr}
        if d.classifier:  # the classifier's cross-entropy on the real batch
            record["d_class"] = stats.pop(5)
        if d.ada_target:  # the strength this step trained with and the signal it saw; then the next step's
            record["augment_p"], record["ada_signal"] = self.augment_p, stats[5]
            self.adapt_augmentation(stats[5])
        return record

    def adapt_augmentation(self, signal: float) -> None:
        """ADA: p one step (batch / ada_images) up while the overfitting signal is above the target, down
        while below, within [0, 1]."""
        d = self.cfg.discriminator
        direction = (signal > d.ada_target) - (signal < d.ada_target)
        self.augment_p = min(1.0, max(0.0, self.augment_p + direction * self.cfg.batch_size * self.dist.world
                                      / d.ada_images))

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        """D's view of a batch: DiffAugment'ed when the recipe says so (see ``augment``)."""
        return augment(x, self.policy, self.aug_gen, self.augment_p) if self.policy else x

    def discriminate(self, real: torch.Tensor, fake: torch.Tensor, y_real: torch.Tensor | None = None,
                     y_fake: torch.Tensor | None = None) -> tuple:
        """D's logits for the real and the fake batch (and their labels, for a conditional D), and with an
        auxiliary classifier its class logits for the real batch (else None). A D without BatchNorm sees both
        batches in one forward (each logit depends on its own image only); with BatchNorm each batch
        normalises by its own statistics, as in the Radford et al. recipe, so they go through apart."""
        aux = bool(self.cfg.discriminator.classifier)
        if self.D.has_batchnorm:
            real_logits, classes = with_classes(self.D_train(self.augmented(real), y_real, classes=aux), aux)
            return real_logits, self.D_train(self.augmented(fake), y_fake), classes
        labels = None if y_real is None else torch.cat([y_real, y_fake])
        logits, classes = with_classes(self.D_train(self.augmented(torch.cat([real, fake])), labels, classes=aux), aux)
        n = len(real)
        return logits[:n], logits[n:], None if classes is None else classes[:n]

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
        write_bytes(self.run_dir / "config.json", (json.dumps(self.cfg.to_dict(), indent=2) + "\n").encode())
        truncate_log(self.run_dir / "log.jsonl", self.step)

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
                if self.dist.main and (self.step % cfg.run.log_every == 0 or self.step == cfg.steps):
                    logf.write(json.dumps(record) + "\n")
                    logf.flush()
                bar.set_postfix(d=f"{losses['d_loss']:.3f}", g=f"{losses['g_loss']:.3f}", img_s=f"{rate:.0f}")
                bar.update(1)
                self.accumulate_average()
                if self.dist.main and (self.step % cfg.run.sample_every == 0 or self.step == cfg.steps):
                    self.sample_grid()
                if self.step % cfg.run.checkpoint_every == 0 or self.step == cfg.steps:
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


def _resume_overrides(recipe, run_dir, overrides: dict) -> dict:
    """What a resumed run may change (the recipe is in its checkpoint): steps, device, average_start."""
    if recipe or run_dir or any(overrides.get(k) is not None for k in ("data", "batch_size", "seed", "threads",
                                                                      "conditional")):
        raise ValueError("with --resume only --steps, --device and --average-start may be given "
                         "(the recipe is in the checkpoint)")
    return {k: overrides.get(k) for k in ("steps", "device", "average_start")}


def open_run(recipe: str | os.PathLike | None = None, resume_dir: str | os.PathLike | None = None,
             run_dir: str | os.PathLike | None = None, progress: bool = True, **overrides) -> Trainer:
    """A fresh run of ``recipe`` in ``run_dir`` (default ``runs/<recipe name>``), or the run in ``resume_dir``
    continued. ``overrides``: data, steps, batch_size, device, seed, threads, average_start (a resumed run takes
    steps, device and average_start only)."""
    if resume_dir:
        return Trainer.resume(resume_dir, progress=progress, **_resume_overrides(recipe, run_dir, overrides))
    if not recipe:
        raise ValueError("give a RECIPE file, or --resume RUN_DIR")
    cfg = TrainConfig.from_file(recipe, **overrides)
    run_dir = Path(run_dir or Path("runs") / Path(recipe).stem)
    if (run_dir / "train_state.pt").exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick --out")
    return Trainer(cfg, run_dir, progress=progress)


def dry_run(recipe: str | os.PathLike | None = None, resume_dir: str | os.PathLike | None = None,
            run_dir: str | os.PathLike | None = None, **overrides) -> str:
    """The recipe ``open_run`` would train with, resolved (defaults and overrides applied, checked), as TOML:
    ``train --dry-run``. Nothing is built, loaded or written."""
    if resume_dir:
        changes = _resume_overrides(recipe, run_dir, overrides)
        state = load_torch(Path(resume_dir) / "train_state.pt")
        if not isinstance(state.get("train_config"), dict):
            raise CheckpointError(f"{Path(resume_dir) / 'train_state.pt'}: not a dcgan-deploy training state")
        return to_toml(TrainConfig.from_dict(state["train_config"], source=str(resume_dir), **changes))
    if not recipe:
        raise ValueError("give a RECIPE file, or --resume RUN_DIR")
    return to_toml(TrainConfig.from_file(recipe, **overrides))
