"""Checkpoints (torch): atomic writes, safe loads, and the generator-only safetensors file.

- ``train_state.pt``: everything to resume exactly; tensors and plain Python types
  only, so it loads with ``torch.load(..., weights_only=True)`` -- never with
  ``weights_only=False``.
- ``generator.safetensors``: the deployable generator, its ``NetConfig`` in the metadata.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from .files import atomic_path
from .nets import NetConfig

STATE_FORMAT = 1
NET_KEY = "dcgan_deploy.net"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not fit; the message says why."""


def save_train_state(state: dict, dest: str | os.PathLike) -> None:
    """Atomically write a training state (a crash mid-save keeps the previous file)."""
    with atomic_path(dest) as tmp:
        torch.save(state, tmp)


def load_torch(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True``, always; a refusal becomes a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses pickles that would import or call arbitrary code.
        raise CheckpointError(f"{path}: refused to load: the file holds objects other than tensors and plain "
                              f"data, which could run code ({_first_line(e)})") from None
    except Exception as e:  # torch.load raises many types (RuntimeError, EOFError, struct.error, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def save_generator(state_dict: dict, cfg: NetConfig, dest: str | os.PathLike, extra: dict[str, str] | None = None) -> None:
    """Atomically write generator weights + config as safetensors."""
    from safetensors.torch import save_file
    meta = {NET_KEY: json.dumps(cfg.to_dict()), **(extra or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_generator_file(path: str | os.PathLike) -> tuple[dict, NetConfig | None, dict[str, str]]:
    """``generator.safetensors`` -> (state dict, its NetConfig or None, metadata)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    cfg = NetConfig.from_dict(json.loads(meta[NET_KEY])) if NET_KEY in meta else None
    return tensors, cfg, meta


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__
