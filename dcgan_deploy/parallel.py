"""Where and how a training run computes (torch): its device, its threads and determinism, and its
place in a ``torchrun`` launch.

Data-parallel: launched by ``torchrun`` (RANK/WORLD_SIZE set), every rank draws the same global batch
and takes its own slice. The generator and the discriminator are each wrapped in PyTorch's
``DistributedDataParallel`` (bucketed gradient all-reduce, overlapped with the backward pass). GANs
need two things DDP leaves to the caller: D's gradients must not be reduced in G's update (G's loss goes
through the plain D module, whose weights take no gradient there), and BatchNorm buffers follow rank 0
(``broadcast_buffers``: DDP copies rank 0's buffers at the start of each forward; SyncBatchNorm would
instead normalise over the global batch and change what a one-process run computes). So all ranks hold
identical weights; only rank 0 writes files.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import DataError


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

    def wrap(self, module: nn.Module, unused: bool = False) -> nn.Module:
        """``module`` for its training forward passes: in DistributedDataParallel under torchrun (gradients
        averaged over the ranks during the backward pass, BatchNorm buffers taken from rank 0 at each
        forward), as it is in one process. ``unused``: some forward passes leave parameters out."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel
        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=True, find_unused_parameters=unused)

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


def set_determinism(threads: int, deterministic: bool, device: torch.device) -> int:
    """Fix the thread count (``threads``, or all cores when 0) and, with ``deterministic``, the
    deterministic kernels; returns the thread count (kept in the run's config for resume)."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.backends.mkldnn.deterministic = deterministic
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
    # On CUDA some backward kernels (adaptive pooling, upsampling, grid sampling) have no deterministic
    # version: warn there.
    torch.use_deterministic_algorithms(deterministic, warn_only=device.type == "cuda")
    return threads


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


class Batches:
    """Seeded mini-batches in [-1, 1], sampled without replacement epoch by epoch.

    ``state_dict`` / ``load_state_dict`` make the sequence resumable exactly.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, labels: np.ndarray | None = None):
        if len(images) < batch_size:
            raise DataError(f"the data has {len(images)} images, fewer than one batch of {batch_size}")
        self.images = torch.from_numpy(images)
        self.labels = None if labels is None else torch.from_numpy(labels)  # int64 [N], for conditional runs
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(images), generator=self.gen)
        self.pos = 0

    def next(self, rank: int = 0, world: int = 1) -> torch.Tensor:
        """The next global batch of ``batch_size * world`` images; this rank's slice, float ``[B, C, H, W]``."""
        return self.next_labelled(rank, world)[0]

    def next_labelled(self, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``next``, with the images' labels (int64 ``[B]``; ``None`` for unlabelled data)."""
        need = self.batch_size * world
        if need > len(self.images):
            raise DataError(f"the data has {len(self.images)} images, fewer than one global batch of {need}")
        if self.pos + need > len(self.perm):
            self.perm = torch.randperm(len(self.images), generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + need][rank * self.batch_size:(rank + 1) * self.batch_size]
        self.pos += need
        return self.images[idx].float() / 127.5 - 1.0, None if self.labels is None else self.labels[idx]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])


def weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
