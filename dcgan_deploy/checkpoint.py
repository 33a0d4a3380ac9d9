"""Checkpoints (torch): atomic writes, safe loads, and turning any supported checkpoint into a generator.

- ``train_state.pt``: everything to resume exactly; tensors and plain Python types
  only, so it loads with ``torch.load(..., weights_only=True)`` -- never with
  ``weights_only=False``.
- ``generator.safetensors``: the deployable generator, its ``NetConfig`` in the metadata.
- a bare generator state dict (``netG_epoch_N.pth`` of pytorch/examples' DCGAN) when the
  architecture is named; pytorch-GAN's ``gan``/``cgan`` and ``dcgan``/``acgan`` generators' state
  dicts with ``--arch pytorch-gan-mlp`` / ``pytorch-gan-dcgan`` (their keys renamed to ours).

A checkpoint is untrusted input: its configs are validated (types, ranges, and the size of
the net they describe, counted before anything is allocated), and every key and shape of
its weights is checked against the architecture before they are loaded.
"""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .files import write_bytes
from .nets import PYTORCH_GAN, GeneratorNet, NetConfig, check_size, recompute_bn_stats
from .runtime import first_line

STATE_FORMAT = 1
NET_KEY = "dcgan_deploy.net"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not fit; the message says why."""


# ---- writing ---------------------------------------------------------------------------
def save_train_state(state: dict, dest: str | os.PathLike) -> None:
    """Atomically write a training state (a crash mid-save keeps the previous file). Serialised in
    memory first, so that a full disk is reported as such, naming the file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _write(dest, buffer.getvalue())


def save_generator(state_dict: dict, cfg: NetConfig, dest: str | os.PathLike, extra: dict[str, str] | None = None) -> None:
    """Atomically write generator weights + config as safetensors."""
    from safetensors.torch import save
    meta = {NET_KEY: json.dumps(cfg.to_dict()), **(extra or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _write(dest, save(tensors, metadata=meta))


def _write(dest: str | os.PathLike, data: bytes) -> None:
    try:
        write_bytes(dest, data)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"{dest}: disk full while writing the checkpoint ({len(data) / 1e6:.0f} MB); "
                                  "the previous checkpoint is kept. Free some space and resume") from None
        raise


# ---- reading -----------------------------------------------------------------------------
def load_torch(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True``, always; a refusal becomes a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses pickles that would import or call arbitrary code.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = found.group(1) if found else first_line(e)
        raise CheckpointError(f"{path}: refused to load: the file holds objects other than tensors and plain "
                              f"data, which could run code ({what}); a generator saved whole (torch.save(generator)) "
                              "exports once saved as torch.save(generator.state_dict())") from None
    except Exception as e:  # torch.load raises many types (RuntimeError, EOFError, struct.error, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def load_generator_file(path: str | os.PathLike) -> tuple[dict, NetConfig | None, dict[str, str]]:
    """``generator.safetensors`` -> (state dict, its NetConfig or None, metadata)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    cfg = None
    if NET_KEY in meta:
        try:
            cfg = net_config(json.loads(meta[NET_KEY]), path)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: metadata {NET_KEY!r} is not valid JSON ({e})") from None
    return tensors, cfg, meta


def net_config(raw, path: Path | str) -> NetConfig:
    """A checkpoint's architecture config, validated (types, ranges, network size)."""
    try:
        cfg = NetConfig.from_dict(raw)
        check_size(cfg)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    return cfg


# ---- any checkpoint -> a generator ---------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint, understood: the eval-mode generator, its config and provenance."""

    model: GeneratorNet
    cfg: NetConfig
    name: str
    dataset: str = "unknown"
    train_step: int = -1
    source: str = ""
    notes: list[str] = field(default_factory=list)
    average: str = ""  # what the trainer's weight averaging averaged ("" = none)
    classes: tuple = ()  # a conditional generator's class names, label i = classes[i]


def checked_classes(raw, cfg: NetConfig, path) -> tuple:
    """A conditional checkpoint's class names: one unique string per class of ``cfg`` (none for an
    unconditional one); a checkpoint that omits them gets "0", "1", ..."""
    if not cfg.num_classes:
        if raw:
            raise CheckpointError(f"{path}: names classes, but its generator is not conditional")
        return ()
    if raw is None:
        return tuple(str(i) for i in range(cfg.num_classes))
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: its classes are not a JSON list") from None
    if not class_names_fit(raw, cfg.num_classes):
        raise CheckpointError(f"{path}: its classes must be {cfg.num_classes} different names")
    return tuple(raw)


def class_names_fit(names, count: int) -> bool:
    """Whether ``names`` is a list of ``count`` different non-empty strings."""
    return (isinstance(names, list) and len(names) == count and all(isinstance(x, str) and x for x in names)
            and len(set(names)) == len(names))


def average_note(count: int, every, start) -> str:
    """What a weight average holds, as the ``average`` metadata says it."""
    return f"{count} generator{'s' if count != 1 else ''}, every {every} steps from step {start}"


def check_average(average, model: nn.Module, path: Path | str) -> tuple[list, int]:
    """A training state's weight average (``{"sum": [float64 tensors], "count": n}``), checked against ``model``'s
    parameters: (sums, count), or ``CheckpointError``."""
    params = list(model.parameters())
    sums, count = (average.get("sum"), average.get("count")) if isinstance(average, dict) else (None, None)
    if (not isinstance(sums, list) or isinstance(count, bool) or not isinstance(count, int) or count < 1
            or len(sums) != len(params)
            or any(not isinstance(t, torch.Tensor) or t.shape != p.shape for t, p in zip(sums, params))):
        raise CheckpointError(f"{path}: its weight average does not match the generator")
    return sums, count


@torch.no_grad()
def load_mean(model: nn.Module, sums: list, count: int) -> None:
    """Set ``model``'s parameters to a weight average: its float64 ``sums`` over ``count``."""
    for p, total in zip(model.parameters(), sums):
        p.copy_(total / count)


def open_checkpoint(ckpt: str | os.PathLike, arch: str | None = None) -> Checkpoint:
    """Load any supported checkpoint into an eval-mode ``GeneratorNet``.

    Accepts the trainer's ``train_state.pt`` and ``generator.safetensors``, and a bare
    generator state dict (e.g. ``netG_epoch_N.pth`` from pytorch/examples' DCGAN)
    when ``arch`` names its architecture.
    """
    path = Path(ckpt)
    name = path.parent.name if path.name in ("train_state.pt", "generator.safetensors") else path.stem
    if path.suffix == ".safetensors":
        state, cfg, meta = load_generator_file(path)
        if cfg is None:
            cfg = infer_config(state, _need_arch(arch, path), path)
        elif arch and arch != cfg.arch:
            raise CheckpointError(f"{path}: holds a {cfg.arch} generator, not {arch}")
        step = meta.get("train_step", "-1")
        return Checkpoint(build_generator(cfg, state, path), cfg, name, meta.get("dataset", "unknown"),
                          int(step) if step.lstrip("-").isdigit() else -1, str(path), average=meta.get("average", ""),
                          classes=checked_classes(meta.get("classes"), cfg, path))
    obj = load_torch(path)
    if obj.get("format") == STATE_FORMAT and "net_config" in obj:
        cfg = net_config(obj["net_config"], path)
        if arch and arch != cfg.arch:
            raise CheckpointError(f"{path}: holds a {cfg.arch} generator, not {arch}")
        tcfg, step = obj.get("train_config"), obj.get("step")
        if not isinstance(tcfg, dict) or isinstance(step, bool) or not isinstance(step, int):
            raise CheckpointError(f"{path}: a training state needs a 'train_config' dict and an integer 'step'")
        ema, average = obj.get("ema"), obj.get("average")
        weights = ema if ema else obj.get("G")
        model = build_generator(cfg, weights, path)
        notes, averaged = [], ""
        if average is not None:  # the trainer deploys the mean of the averaged weights, so export does too
            sums, count = check_average(average, model, path)
            load_mean(model, sums, count)
            side = tcfg.get("generator") if isinstance(tcfg.get("generator"), dict) else tcfg  # tabled or flat recipe
            averaged = average_note(count, side.get("average_every"), side.get("average_start"))
        if ema or averaged:
            seed = tcfg.get("seed", 0)
            recompute_bn_stats(model, seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)
            model.eval()
            notes.append(f"{'the mean of the averaged' if averaged else 'EMA'} weights, BatchNorm statistics "
                         "re-estimated")
        data = tcfg.get("data")
        return Checkpoint(model, cfg, name, data if isinstance(data, str) else "unknown", step, str(path), notes,
                          averaged, checked_classes(obj.get("classes"), cfg, path))
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    state = from_pytorch_gan(unwrapped(state), _need_arch(arch, path))
    cfg = infer_config(state, arch, path)
    return Checkpoint(build_generator(cfg, state, path), cfg, name, source=str(path),
                      classes=checked_classes(None, cfg, path))


def _need_arch(arch: str | None, path: Path) -> str:
    if not arch:
        raise CheckpointError(f"{path}: a bare state dict does not say its architecture; pass --arch "
                              "(e.g. --arch dcgan64 for pytorch/examples' netG_epoch_N.pth)")
    return arch


WRAPPERS = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel's, torch.compile's


def unwrapped(state: dict) -> dict:
    """A state dict saved from a wrapped net (every key under ``module.`` or ``_orig_mod.``, or both) under
    the net's own keys; any other is returned as it is."""
    for prefix in WRAPPERS * 2:
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def from_pytorch_gan(state: dict, arch: str) -> dict:
    """A pytorch-GAN generator's state dict under our names (others are returned as they are):
    ``label_emb`` is ``embed``; gan/cgan's ``model.k`` is ``main.k``; dcgan/acgan's ``l1.0`` is ``main.0`` and
    ``conv_blocks.k`` (``conv_model.k`` in some copies) ``main.(k + 2)``. cgan joins its class embedding
    *before* the latent, ours after it: the first layer's input columns are swapped to match."""
    if arch not in PYTORCH_GAN or not isinstance(state, dict) \
            or not any(isinstance(k, str) and k.startswith(("model.", "l1.")) for k in state):
        return state

    def rename(key):
        if not isinstance(key, str):
            return key
        head, _, rest = key.partition(".")
        if key == "label_emb.weight":
            return "embed.weight"
        if head in ("model", "l1"):
            return "main." + rest
        index, _, tail = rest.partition(".")
        if head in ("conv_blocks", "conv_model") and index.isdigit():
            return f"main.{int(index) + 2}.{tail}"
        return key
    out = {rename(k): v for k, v in state.items()}
    first, embed = out.get("main.0.weight"), out.get("embed.weight")
    if arch == "pytorch-gan-mlp" and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in (first, embed)) \
            and first.shape[1] > embed.shape[1]:
        classes = embed.shape[1]
        out["main.0.weight"] = torch.cat([first[:, classes:], first[:, :classes]], 1)
    return out


def _shape(state: dict, key: str, dims: int) -> tuple | None:
    t = state.get(key)
    return tuple(int(n) for n in t.shape) if isinstance(t, torch.Tensor) and t.dim() == dims else None


def _square(n: int) -> int | None:
    root = int(round(n ** 0.5))
    return root if root > 0 and root * root == n else None


def infer_config(state: dict, arch: str, path: Path | str = "checkpoint") -> NetConfig:
    """A ``NetConfig`` for a bare state dict: sizes read off the weight shapes where the arch allows."""
    try:
        cfg = NetConfig.for_arch(arch)
        if arch == "dcgan64" and all(isinstance(state.get(k), torch.Tensor) and state[k].dim() == 4
                                     for k in ("main.0.weight", "main.12.weight")):
            nz, ngf8 = state["main.0.weight"].shape[:2]         # ConvT(nz -> ngf*8): weight [nz, ngf*8, 4, 4]
            nc = state["main.12.weight"].shape[1]               # ConvT(ngf -> nc):   weight [ngf, nc, 4, 4]
            cfg = NetConfig.for_arch(arch, latent_dim=int(nz), g_width=int(ngf8) // 8, channels=int(nc))
        elif arch in PYTORCH_GAN:
            cfg = NetConfig.for_arch(arch, **pytorch_gan_sizes(state, arch))
        check_size(cfg)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return cfg


def pytorch_gan_sizes(state: dict, arch: str) -> dict:
    """The sizes a pytorch-GAN layout's weights show (under our names): latent, width, channels, image size and
    classes; what they do not show is left to the architecture's defaults (and the key check names it)."""
    first, embed = _shape(state, "main.0.weight", 2), _shape(state, "embed.weight", 2)
    classes = embed[0] if embed else 0
    sizes = {"num_classes": classes}
    if arch == "pytorch-gan-mlp":
        last = _shape(state, "main.11.weight", 2)
        if first:
            sizes.update(g_width=first[0], latent_dim=first[1] - (embed[1] if embed else 0))
        if last:
            channels = 1 if _square(last[0]) else 3
            sizes.update(channels=channels, image_size=_square(last[0] // channels) or 0)
    else:
        conv, out = _shape(state, "main.4.weight", 4), _shape(state, "main.11.weight", 4)
        if first and conv:
            sizes.update(latent_dim=first[1], g_width=conv[0], image_size=4 * (_square(first[0] // conv[0]) or 0))
        if out:
            sizes["channels"] = out[0]
    return sizes


def build_generator(cfg: NetConfig, state, path: Path | str) -> GeneratorNet:
    """A GeneratorNet with ``state`` loaded strictly; the first mismatch is named. Keys and shapes are
    checked against the architecture on torch's meta device before any weight is allocated."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no generator weights")
    with torch.device("meta"):
        want = GeneratorNet(cfg).state_dict()
    for key, tensor in want.items():
        if key not in state:
            raise CheckpointError(f"{path}: does not match {cfg.arch}: key {key} (shape {list(tensor.shape)}) "
                                  "is missing from the checkpoint")
        if not isinstance(state[key], torch.Tensor):
            raise CheckpointError(f"{path}: key {key} is a {type(state[key]).__name__}, not a tensor")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: does not match {cfg.arch}: key {key} has shape {list(state[key].shape)} "
                                  f"in the checkpoint, {list(tensor.shape)} in the architecture")
    extra = [k for k in state if k not in want]
    if extra:
        raise CheckpointError(f"{path}: does not match {cfg.arch}: unexpected key {extra[0]}")
    model = GeneratorNet(cfg)
    model.load_state_dict(state)
    model.eval()
    check_batchnorm(model, path)
    return model


def check_batchnorm(model: nn.Module, path: Path | str = "model") -> None:
    """Every BatchNorm must carry finite running statistics (eval mode uses them), every weight be finite."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None or m.running_var is None:
                raise CheckpointError(f"{path}: BatchNorm {name} has no running statistics")
            if not (torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all()
                    and (m.running_var >= 0).all()):
                raise CheckpointError(f"{path}: BatchNorm {name} has non-finite or negative running statistics")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise CheckpointError(f"{path}: weight {name} has non-finite values")


def truncate_log(log: Path, step: int) -> None:
    """On resume, drop the lines of a run's ``log.jsonl`` past its checkpoint at ``step`` (written by a run
    that was then killed). A torn last line (a write cut short by a crash or a full disk) is dropped too;
    any other unreadable line is an error naming the file and the line."""
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
            and (r["step"] <= step if "step" in r else r.get("resumed_from", 0) < step)]
    if step:
        keep.append({"resumed_from": step})
    write_bytes(log, "".join(json.dumps(r) + "\n" for r in keep).encode())
