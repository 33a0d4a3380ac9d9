"""The runtime: one onnxruntime session that turns seeds or latents into images.

numpy + onnxruntime only; importing this module never imports torch, onnx or click.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import bundled
from .images import to_uint8
from .latent import PRIORS, LatentStream, check_count, check_seed, random_seed

# The versions of the metadata schema this runtime understands (``dcgan_deploy.format``).
SUPPORTED_FORMATS = ("1",)
FORMAT_KEY = "dcgan_deploy.format"
REQUIRED_KEYS = ("architecture", "latent_dim", "latent_prior", "channels", "height", "width")
DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelError(Exception):
    """A model file that cannot be used; the message names the file and the problem."""


class UnverifiedModelWarning(UserWarning):
    """The model's parity was not proven at export time (e.g. fp16 without CUDA)."""


class Generator:
    """An exported DCGAN generator in an onnxruntime session.

    Create with ``Generator.load``. Calls are thread-safe: the session is shared and
    every call draws its latents from its own seeded stream.
    """

    def __init__(self, session: ort.InferenceSession, path: Path, metadata: dict[str, str]):
        self.session = session
        self.path = path
        self.metadata = metadata
        self.latent_dim = int(metadata["latent_dim"])
        self.latent_prior = metadata["latent_prior"]
        self.channels = int(metadata["channels"])
        self.height = int(metadata["height"])
        self.width = int(metadata["width"])

    # ---- construction -------------------------------------------------------------
    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str = "auto",
             threads: int | None = None) -> "Generator":
        """Open a ``.onnx`` file or a bundled model by name (``None``: the default).

        ``device``: ``auto`` (CUDA when it is really active, else CPU), ``cpu`` or
        ``cuda`` (CUDA or a ``ModelError`` saying why). ``threads``: onnxruntime's
        intra-op thread count (default: onnxruntime's choice).
        """
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        if threads is not None:
            threads = check_count(threads, "threads")
        path = bundled.resolve(model)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        session = _open_session(path, device, threads)
        metadata = check_metadata(dict(session.get_modelmeta().custom_metadata_map), path)
        _check_graph(session, path, metadata)
        gen = cls(session, path, metadata)
        if gen.parity.get("verified") is False:
            warnings.warn(f"{path}: parity of this model is unverified ({gen.parity.get('reason', 'no reason given')})",
                          UnverifiedModelWarning, stacklevel=2)
        return gen

    # ---- facts ----------------------------------------------------------------------
    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (``CUDAExecutionProvider`` or ``CPUExecutionProvider``)."""
        return self.session.get_providers()[0]

    @property
    def device(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of the uint8 images ``generate`` returns."""
        return self.height, self.width, self.channels

    @property
    def parity(self) -> dict:
        """The export-time parity summary stored in the model (``{}`` if absent)."""
        try:
            return json.loads(self.metadata.get("parity", "{}"))
        except json.JSONDecodeError:
            return {}

    # ---- generation -----------------------------------------------------------------
    def latents(self, n: int, seed: int) -> np.ndarray:
        """``n`` latents for ``seed`` from the model's prior: float32 ``[n, latent_dim]``."""
        return LatentStream(seed, self.latent_dim, self.latent_prior).take(check_count(n))

    def run(self, z: np.ndarray) -> np.ndarray:
        """Float32 latents ``[n, latent_dim]`` -> float32 images ``[n, C, H, W]`` in [-1, 1]."""
        self._check_latents(z)
        return self.session.run(["image"], {"z": z})[0]

    def iter_generate(self, n: int, seed: int | None = None, batch_size: int = 64) -> Iterator[np.ndarray]:
        """Yield uint8 chunks ``[<=batch_size, H, W, C]`` whose concatenation is ``generate(n, seed)``.

        Memory is bounded by one chunk, whatever ``n`` is.
        """
        n, batch_size = check_count(n), check_count(batch_size, "batch_size")
        stream = LatentStream(random_seed() if seed is None else check_seed(seed), self.latent_dim, self.latent_prior)
        for start in range(0, n, batch_size):
            yield to_uint8(self.run(stream.take(min(batch_size, n - start))))

    def generate(self, n: int, seed: int | None = None, batch_size: int = 64) -> np.ndarray:
        """``n`` images for ``seed`` (random when ``None``): uint8 ``[n, H, W, C]``."""
        return np.concatenate(list(self.iter_generate(n, seed, batch_size)))

    def _check_latents(self, z) -> None:
        if not isinstance(z, np.ndarray):
            raise ValueError(f"latents must be a numpy array, got {type(z).__name__}")
        if z.dtype != np.float32:
            raise ValueError(f"latents must be float32, got {z.dtype}")
        if z.ndim != 2 or z.shape[1] != self.latent_dim or z.shape[0] < 1:
            raise ValueError(f"latents must have shape [n >= 1, {self.latent_dim}], got {list(z.shape)}")
        if not np.isfinite(z).all():
            raise ValueError("latents contain NaN or infinite values")

    def describe(self) -> dict:
        """Everything ``dcgan-deploy info`` shows, as plain data."""
        facts = {
            "path": str(self.path),
            "metadata": {k: v for k, v in self.metadata.items() if k not in ("parity", "evaluation")},
            "parity": self.parity,
            "providers": {"available": ort.get_available_providers(), "active": self.session.get_providers()},
        }
        if "evaluation" in self.metadata:
            facts["evaluation"] = json.loads(self.metadata["evaluation"])
        return facts

    def __repr__(self) -> str:
        return (f"Generator({str(self.path)!r}, {self.metadata['architecture']}, z={self.latent_dim}, "
                f"image={self.channels}x{self.height}x{self.width}, provider={self.provider})")


# ---- reading and checking a model file ---------------------------------------------
def check_metadata(meta: dict[str, str], path: Path | str) -> dict[str, str]:
    """Raise ``ModelError`` unless ``meta`` follows the model-file contract."""
    if FORMAT_KEY not in meta:
        raise ModelError(f"{path}: not a dcgan-deploy generator (no {FORMAT_KEY!r} metadata)")
    fmt = meta[FORMAT_KEY]
    if fmt not in SUPPORTED_FORMATS:
        raise ModelError(f"{path}: unknown model format {fmt!r}; this dcgan-deploy reads format "
                         f"{', '.join(SUPPORTED_FORMATS)} (upgrade dcgan-deploy?)")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelError(f"{path}: metadata lacks {', '.join(missing)}")
    for key in ("latent_dim", "channels", "height", "width"):
        if not meta[key].isdigit() or int(meta[key]) < 1:
            raise ModelError(f"{path}: metadata {key}={meta[key]!r} is not a positive integer")
    if meta["latent_prior"] not in PRIORS:
        raise ModelError(f"{path}: unknown latent_prior {meta['latent_prior']!r}")
    return meta


def _open_session(path: Path, device: str, threads: int | None,
                  cuda_options: dict[str, str] | None = None) -> ort.InferenceSession:
    """``cuda_options``: the CUDA provider's options (``{"enable_cuda_graph": "1"}``, say)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise ModelError("device 'cuda' requested, but this onnxruntime build has no CUDA provider "
                         "(replace onnxruntime with onnxruntime-gpu: pip install 'dcgan-deploy[gpu]')")
    providers = [(CUDA, cuda_options or {}), CPU] if device != "cpu" and CUDA in available else [CPU]
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:
        # onnxruntime raises its own exception types with long multi-line messages.
        what = (f"onnxruntime could not open it with CUDA options {cuda_options}" if cuda_options
                else "not a valid ONNX model")
        raise ModelError(f"{path}: {what} ({_first_line(e)})") from None
    # onnxruntime silently drops a provider that fails to initialise; check what is active.
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise ModelError("device 'cuda' requested, but the CUDA provider did not initialise "
                         "(onnxruntime fell back to CPU: check the CUDA and cuDNN libraries)")
    return session


def _check_graph(session: ort.InferenceSession, path: Path, meta: dict[str, str]) -> None:
    ins, outs = session.get_inputs(), session.get_outputs()
    if [i.name for i in ins] != ["z"] or [o.name for o in outs] != ["image"]:
        raise ModelError(f"{path}: graph must have one input 'z' and one output 'image', has inputs "
                         f"{[i.name for i in ins]} and outputs {[o.name for o in outs]}")
    z, image = ins[0], outs[0]
    want_z = [int(meta["latent_dim"])]
    want_img = [int(meta["channels"]), int(meta["height"]), int(meta["width"])]
    for arg, want in ((z, want_z), (image, want_img)):
        if arg.type != "tensor(float)":
            raise ModelError(f"{path}: '{arg.name}' must be float32, is {arg.type}")
        if len(arg.shape) != len(want) + 1 or list(arg.shape[1:]) != want:
            raise ModelError(f"{path}: '{arg.name}' has shape {arg.shape}, metadata says [batch, "
                             f"{', '.join(map(str, want))}]")
        if isinstance(arg.shape[0], int) and arg.shape[0] != -1:
            raise ModelError(f"{path}: '{arg.name}' has a fixed batch size {arg.shape[0]}; it must be dynamic")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
