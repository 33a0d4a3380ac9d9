"""The seam between ``Generator`` and an inference engine (numpy + onnxruntime).

A ``Generator`` needs four things of an engine: open a model file for a device, say what the graph's
input and output are, run a batch of latents to images, and say what it runs on. ``Session`` is that
interface; ``OrtSession`` is onnxruntime's (its CPU and CUDA providers). Another engine (OpenVINO,
CoreML, TensorRT through onnxruntime's providers) is one new file with a class like ``OrtSession``
and one ``register`` call; ``Generator.load(..., engine=NAME)`` then opens models with it, and every
check of the file, the latents and the output stays the runtime's.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from .modelfile import ModelError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class Port:
    """A graph input or output: its name, element type (``float32``, ...) and shape (``None``: dynamic)."""

    name: str
    dtype: str
    shape: tuple


class Session(Protocol):
    """What ``Generator`` asks of an engine's open model."""

    engine: str     # the registered engine's name
    provider: str   # what runs the graph: "CPUExecutionProvider", "CUDAExecutionProvider", "GPU.0", ...
    device: str     # "cpu" or "cuda"

    def inputs(self) -> list[Port]: ...
    def outputs(self) -> list[Port]: ...
    def run(self, z: np.ndarray, label: np.ndarray | None = None) -> np.ndarray: ...
    #   float32 z [n, latent_dim] (and a conditional model's int64 label [n]) -> float32 images [n, C, H, W]
    def facts(self) -> dict: ...                      # what ``info`` shows of the engine


Opener = Callable[[Path, str, "int | None"], Session]  # (path, device "auto" | "cpu" | "cuda", threads)
ENGINES: dict[str, Opener] = {}


def register(name: str, opener: Opener) -> None:
    """Make an engine available to ``Generator.load(..., engine=name)``."""
    ENGINES[name] = opener


def open_session(path: Path, device: str, threads: int | None, engine: str = "onnxruntime") -> Session:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    return ENGINES[engine](path, device, threads)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(double)": "float64", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


class OrtSession:
    """onnxruntime's session of a model file. ``ort`` is the ``InferenceSession`` itself, for what only
    onnxruntime has (IO binding and CUDA graphs in ``bench``)."""

    engine = "onnxruntime"

    def __init__(self, session: ort.InferenceSession):
        self.ort = session

    @classmethod
    def open(cls, path: Path, device: str, threads: int | None, cuda_options: dict[str, str] | None = None
             ) -> "OrtSession":
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
            raise ModelError(f"{path}: {what} ({first_line(e)})") from None
        # onnxruntime silently drops a provider that fails to initialise; check what is active.
        if device == "cuda" and session.get_providers()[0] != CUDA:
            raise ModelError("device 'cuda' requested, but the CUDA provider did not initialise "
                             "(onnxruntime fell back to CPU: check the CUDA and cuDNN libraries)")
        return cls(session)

    @property
    def provider(self) -> str:
        return self.ort.get_providers()[0]

    @property
    def device(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"

    def inputs(self) -> list[Port]:
        return [_port(a) for a in self.ort.get_inputs()]

    def outputs(self) -> list[Port]:
        return [_port(a) for a in self.ort.get_outputs()]

    def run(self, z: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
        return self.ort.run(["image"], {"z": z} if label is None else {"z": z, "label": label})[0]

    def facts(self) -> dict:
        return {"available": ort.get_available_providers(), "active": self.ort.get_providers()}


def _port(arg) -> Port:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return Port(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), at most 300 characters."""
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


register("onnxruntime", OrtSession.open)
