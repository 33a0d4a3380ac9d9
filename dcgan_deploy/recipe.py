"""A training recipe: a TOML file of tables, validated into nested dataclasses (``TrainConfig``).

    arch = "mnist-dcgan"          # what to train, on what, how long
    data = "mnist-sample"
    steps = 32000
    batch_size = 256
    seed = 0
    conditional = "off"           # "on": class-conditional on the data's labels; "auto": when it has them
    [optim]                       # Adam and the learning-rate schedule
    [generator]                   # what the run deploys: EMA, weight averaging
    [discriminator]               # D's side for small data sets: loss, augmentation, R1
    [run]                         # cadences, device, precision, determinism, threads
    [net]                         # the architecture's sizes (``nets.NetConfig``)

Every key is checked for its type and range when the recipe is read, and an unknown key is an error.
A recipe in the older flat form (every key at the top level, as the checkpoints of earlier versions
hold) is read into the same tables. ``to_toml`` writes the resolved recipe (``train --dry-run``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# Options the trainer had and dropped, having measured worse on the shipped models' data
# (training/emoji64/RECORD.md); a recipe that leaves one at its "off" value still reads.
REMOVED = {"lecam": 0.0, "top_k": 0.0, "minibatch_std": 0, "joint_batch": False}
REMOVED_IN = "a3b9021"
_WORDS = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false"}


@dataclass
class Optim:
    """Adam for both nets, and the learning-rate schedule: ``lr`` until step ``lr_decay_start``, then
    linearly to 0 at ``lr_decay_end`` (fixed steps, so a run resumed with more steps keeps its schedule;
    0 / 0 = constant). ``lr_d``: D's own rate (0 = ``lr``)."""

    lr: float = 2e-4
    lr_d: float = 0.0
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_start: int = 0
    lr_decay_end: int = 0


@dataclass
class GeneratorSide:
    """What the run deploys: an EMA of G's weights (``ema`` = its decay, 0 = off), and weight averaging:
    from step ``average_start`` on (0 = off), every ``average_every`` steps, G's weights (the EMA's when
    on) join a plain mean, deployed with BatchNorm re-estimated. Neither changes training."""

    ema: float = 0.0
    average_start: int = 0
    average_every: int = 1000


@dataclass
class DiscriminatorSide:
    """D's side, for small data sets (the generator and its export never change): the loss (``bce``:
    non-saturating; ``hinge``), DiffAugment / ADA policies on real and generated images alike, ADA's
    adaptive strength (``ada_target``: 0 = every image augmented), spectral normalisation, lazy R1, and for a
    conditional run an auxiliary classifier (``classifier``: the weight of its cross-entropy, 0 = off; D's head
    learns the real images' classes, G's images are pushed towards being read as their labels)."""

    loss: str = "bce"
    augment: str = ""
    ada_target: float = 0.0
    ada_images: int = 500_000
    spectral_norm: bool = False
    r1: float = 0.0
    r1_every: int = 16
    classifier: float = 0.0


@dataclass
class Run:
    """How the run computes and what it writes: cadences, device, bf16 autocast and channels_last
    (``auto``: on for CUDA and AMX CPUs), bitwise determinism, the thread count (0 = all cores, fixed at
    the start and kept on resume)."""

    sample_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    deterministic: bool = True
    threads: int = 0


TABLES = {"optim": Optim, "generator": GeneratorSide, "discriminator": DiscriminatorSide, "run": Run}
TOP = ("arch", "data", "steps", "batch_size", "seed", "conditional")
CONDITIONAL = ("off", "on", "auto")
HOME = {f.name: table for table, cls in TABLES.items() for f in dataclasses.fields(cls)}  # key -> its table


@dataclass
class TrainConfig:
    """A recipe: what to train on what, and how. Saved in the checkpoint and ``config.json``."""

    arch: str
    data: str = "mnist-sample"
    steps: int = 2000
    batch_size: int = 64
    seed: int = 0
    # class-conditional: "on" (the data must be labelled), "off", or "auto" (on when the data has two or
    # more classes: a .npz's labels, an emoji package's categories, a folder's class subfolders)
    conditional: str = "off"
    optim: Optim = field(default_factory=Optim)
    generator: GeneratorSide = field(default_factory=GeneratorSide)
    discriminator: DiscriminatorSide = field(default_factory=DiscriminatorSide)
    run: Run = field(default_factory=Run)
    net: dict = field(default_factory=dict)  # NetConfig overrides (g_width, d_width, channels, latent_dim, ...)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        """Read a TOML recipe; keyword overrides (any key, by name; ``None`` = keep) win."""
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
    def of(cls, **settings) -> "TrainConfig":
        """A recipe from keyword settings, flat (``TrainConfig.of(arch="dcgan64", lr=1e-4)``) or tabled
        (``optim={"lr": 1e-4}``), checked as a recipe file is."""
        return cls.from_dict(settings)

    @classmethod
    def from_dict(cls, raw, source: str = "config", **overrides) -> "TrainConfig":
        """A recipe from a dict, tabled or flat: every key known, of its type and in its range (``ValueError``
        naming the key and its table)."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: a recipe must be a table of settings, got {type(raw).__name__}")
        try:
            top, tables = _sorted_keys(raw)
            for key, value in overrides.items():
                if value is not None:
                    if key not in TOP and key not in HOME:
                        raise ValueError(f"unknown setting(s) {key}")
                    (top if key in TOP else tables[HOME[key]])[key] = value
            if "arch" not in top:
                raise ValueError("the recipe must name an 'arch'")
            _check_types(top, TrainConfig, "")
            for name, cls_ in TABLES.items():
                _check_types(tables[name], cls_, f"[{name}] ")
            cfg = cls(**top, **{name: TABLES[name](**tables[name]) for name in TABLES}, net=tables["net"])
            cfg.check()
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Ranges (types are checked by ``from_dict``)."""
        o, g, d, r = self.optim, self.generator, self.discriminator, self.run
        for where, name, hi in ((self, "steps", 10**9), (self, "batch_size", 65536), (r, "sample_every", 10**9),
                                (r, "checkpoint_every", 10**9), (r, "log_every", 10**9), (d, "r1_every", 10**6),
                                (d, "ada_images", 10**12), (g, "average_every", 10**9)):
            value = getattr(where, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= hi:
                raise ValueError(f"{name} must be a positive integer (at most {hi}), got {value!r}")
        for where, name in ((self, "seed"), (o, "lr_decay_start"), (o, "lr_decay_end"), (r, "threads"),
                            (g, "average_start")):
            value = getattr(where, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if r.threads > 4 * (os.cpu_count() or 1):
            raise ValueError(f"threads must be at most {4 * (os.cpu_count() or 1)} (4 per core here), got {r.threads}")
        if not 0 <= g.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {g.ema}")
        for name in ("lr", "lr_d"):
            value = getattr(o, name)
            if not (math.isfinite(value) and (value > 0 or name == "lr_d" and value == 0)):
                raise ValueError(f"{name} must be a positive finite number{' (or 0 = lr)' if name == 'lr_d' else ''}, "
                                 f"got {value}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(o, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(o, name)}")
        for name in ("r1", "classifier"):
            if not (math.isfinite(getattr(d, name)) and getattr(d, name) >= 0):
                raise ValueError(f"{name} must be a non-negative finite number, got {getattr(d, name)}")
        if d.classifier and self.conditional == "off":
            raise ValueError("classifier (an auxiliary classifier in D) needs a conditional run: "
                             "conditional = \"on\" or \"auto\"")
        from .losses import LOSSES
        if d.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {d.loss!r}")
        if not (math.isfinite(d.ada_target) and 0 <= d.ada_target < 1):
            raise ValueError(f"ada_target must be in [0, 1) (0 = off), got {d.ada_target}")
        from .augment import parse_policy
        if not parse_policy(d.augment) and d.ada_target:
            raise ValueError("ada_target adapts the augmentation's strength: give augment policies too")
        if (o.lr_decay_start or o.lr_decay_end) and not o.lr_decay_end > o.lr_decay_start:
            raise ValueError(f"lr_decay_end ({o.lr_decay_end}) must be after lr_decay_start ({o.lr_decay_start})")
        if r.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {r.device!r}")
        for name in ("amp", "channels_last"):
            if getattr(r, name) not in ("auto", "on", "off"):
                raise ValueError(f"{name} must be auto, on or off, got {getattr(r, name)!r}")
        if not self.data:
            raise ValueError("data must name a data source")
        if self.conditional not in CONDITIONAL:
            raise ValueError(f"conditional must be one of {', '.join(CONDITIONAL)}, got {self.conditional!r}")
        for key, value in self.net.items():
            if isinstance(value, (bool, float, list, dict)):
                raise ValueError(f"[net] {key} must be {'a string' if key == 'latent_prior' else 'a whole number'}, "
                                 f"got {value!r}")
        from .nets import check_size
        check_size(self.net_config())  # validates arch and net overrides, and the nets' size

    def net_config(self):
        from .nets import NetConfig
        return NetConfig.for_arch(self.arch, **self.net)

    def lr_at(self, step: int) -> float:
        """The generator's learning rate for the update that step ``step`` (0-based) takes."""
        return self.optim.lr * self.lr_scale(step)

    def lr_d_at(self, step: int) -> float:
        """The discriminator's learning rate at step ``step`` (``lr_d``, or ``lr``; the same schedule)."""
        return (self.optim.lr_d or self.optim.lr) * self.lr_scale(step)

    def lr_scale(self, step: int) -> float:
        o = self.optim
        if not o.lr_decay_end or step < o.lr_decay_start:
            return 1.0
        return max(0.0, (o.lr_decay_end - step) / (o.lr_decay_end - o.lr_decay_start))


def _sorted_keys(raw: dict) -> tuple[dict, dict]:
    """A recipe's keys into the top level and its tables; flat keys (the older form) into their tables."""
    top: dict = {}
    tables: dict = {name: {} for name in (*TABLES, "net")}
    for key, value in raw.items():
        if key in TOP:
            top[key] = value
        elif key in tables:
            if not isinstance(value, dict):
                raise ValueError(f"{key} must be a table ([{key}]), got {value!r}")
            unknown = set(value) - ({f.name for f in dataclasses.fields(TABLES[key])} if key in TABLES else set(value))
            if unknown:
                raise ValueError(f"unknown setting(s) in [{key}]: {', '.join(sorted(unknown))}")
            tables[key].update(value)
        elif key in HOME:
            tables[HOME[key]][key] = value
        elif key in REMOVED:
            if value != REMOVED[key] or isinstance(value, bool) != isinstance(REMOVED[key], bool):
                raise ValueError(f"{key} is no longer in the trainer (it measured worse: training/emoji64/RECORD.md); "
                                 f"commit {REMOVED_IN} has it")
        else:
            raise ValueError(f"unknown setting(s) {key}")
    return top, tables


def _check_types(values: dict, cls, where: str) -> None:
    for f in dataclasses.fields(cls):
        if f.name in values and f.type in _WORDS and not _of_type(values[f.name], f.type):
            raise ValueError(f"{where}{f.name} must be {_WORDS[f.type]}, got {values[f.name]!r}")


def _of_type(value, annotation: str) -> bool:
    """Does a recipe value fit its field's annotation (``int`` excludes booleans; ``float`` takes ints)?"""
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def to_toml(cfg: TrainConfig) -> str:
    """The resolved recipe as TOML, every key with its value (``train --dry-run``); reads back as ``cfg``."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)
    d = cfg.to_dict()
    lines = [f"{k} = {value(d[k])}" for k in TOP]
    for name in (*TABLES, "net"):
        lines += ["", f"[{name}]", *(f"{k} = {value(v)}" for k, v in d[name].items())]
    return "\n".join(lines) + "\n"


def conditioned(cfg: TrainConfig) -> tuple:
    """The recipe's nets for its data: (``NetConfig``, class names, the training ``data.Dataset``). A
    conditional run (``conditional = "on"``, or ``"auto"`` on data with two or more classes) takes the
    data's classes; an unconditional one none."""
    from . import data as data_module
    from .nets import check_size
    net = cfg.net_config()
    data = data_module.load_dataset(cfg.data, net.channels, net.image_size, seed=cfg.seed).training
    labelled = data.labels is not None and len(data.labels) and int(data.labels.max()) >= 1
    if cfg.conditional == "auto" and not labelled and cfg.discriminator.classifier:
        raise data_module.DataError(f"classifier (an auxiliary classifier in D) needs labelled data; {cfg.data} has none")
    if cfg.conditional == "off" or cfg.conditional == "auto" and not labelled:
        return net, (), data
    if not labelled:
        raise data_module.DataError(f"conditional = \"on\" needs labelled data (two or more classes); {cfg.data} "
                                    "has none (use class subfolders, a .npz with 'labels', or mnist-sample)")
    classes = data.classes or tuple(str(i) for i in range(int(data.labels.max()) + 1))
    net = dataclasses.replace(net, num_classes=len(classes))
    check_size(net)
    return net, tuple(classes), data
