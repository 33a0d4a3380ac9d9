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
    def run(self, z: np.ndarray, label: np.ndarray | None = None, walk: tuple | None = None) -> np.ndarray: ...
    #   float32 z [n, latent_dim] (and a conditional model's int64 label [n]) -> float32 images [n, C, H, W];
    #   walk: (int64 label_to [n], float32 mix [n]), for a file that takes a class walk (``walks``)
    walks: bool     # whether the file takes label_to and mix (a class walk); an engine may leave it out (False)
    def facts(self) -> dict: ...                      # what ``info`` shows of the engine


Opener = Callable[..., Session]  # (path, device "auto" | "cpu" | "cuda", threads, cuda_options=None)
ENGINES: dict[str, Opener] = {}
# What the runtime passes to onnxruntime's CUDA provider unless told otherwise (onnxruntime's own defaults,
# cudnn_conv_algo_search EXHAUSTIVE among them, until a GPU measurement says better: benchmarks/gpu_check.py).
CUDA_OPTIONS: dict[str, str] = {}


def register(name: str, opener: Opener) -> None:
    """Make an engine available to ``Generator.load(..., engine=name)``."""
    ENGINES[name] = opener


def open_session(path: Path, device: str, threads: int | None, engine: str = "onnxruntime",
                 cuda_options: dict[str, str] | None = None) -> Session:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    if cuda_options:
        return ENGINES[engine](path, device, threads, cuda_options=cuda_options)
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
        if device != "cpu" and CUDA in available:
            prepare_cuda()
        cuda_options = {**CUDA_OPTIONS, **(cuda_options or {})}
        providers = [(CUDA, cuda_options), CPU] if device != "cpu" and CUDA in available else [CPU]
        try:
            session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:
            # onnxruntime raises its own exception types with long multi-line messages.
            what = (f"onnxruntime could not open it with CUDA options {cuda_options}" if cuda_options
                    else "not a valid ONNX model")
            raise ModelError(f"{path}: {what} ({first_line(e)})") from None
        # onnxruntime silently drops a provider that fails to initialise; check what is active.
        if device == "cuda" and session.get_providers()[0] != CUDA:
            missing = missing_cuda_library()
            raise ModelError("device 'cuda' requested, but the CUDA provider did not initialise: " + (
                f"{missing} cannot be loaded (pip install the nvidia-* package that has it, or put it on "
                "LD_LIBRARY_PATH)" if missing else "onnxruntime fell back to CPU (check the CUDA and cuDNN libraries)"))
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

    @property
    def walks(self) -> bool:
        return {"label_to", "mix"} <= {a.name for a in self.ort.get_overridable_initializers()}

    def run(self, z: np.ndarray, label: np.ndarray | None = None, walk: tuple | None = None) -> np.ndarray:
        feeds = {"z": z} if label is None else {"z": z, "label": label}
        if walk is not None:
            feeds["label_to"], feeds["mix"] = walk
        return self.ort.run(["image"], feeds)[0]

    def facts(self) -> dict:
        return {"available": ort.get_available_providers(), "active": self.ort.get_providers()}


# ---- the CUDA libraries -------------------------------------------------------------------------
_CUDA_STATE: dict = {}


def prepare_cuda() -> dict:
    """Once per process, before the first CUDA session: onnxruntime-gpu's ``preload_dlls`` loads CUDA,
    cuBLAS, cuRAND and cuDNN from the ``nvidia-*`` pip packages where they are installed (or PyTorch's),
    so no LD_LIBRARY_PATH is needed. Returns what happened (``cuda_status`` shows it)."""
    if not _CUDA_STATE:
        preload = getattr(ort, "preload_dlls", None)
        try:
            if preload is not None:
                preload()
            _CUDA_STATE.update(preloaded=preload is not None, error=None)
        except Exception as e:  # noqa: BLE001 -- a library it could not load: say which, later, in one line
            _CUDA_STATE.update(preloaded=False, error=first_line(e))
    return _CUDA_STATE


def cuda_status() -> str:
    """One line for ``info``: whether this onnxruntime has a CUDA provider and whether its libraries load."""
    if CUDA not in ort.get_available_providers():
        return "no CUDA provider in this onnxruntime build (the gpu extra installs onnxruntime-gpu)"
    state = prepare_cuda()
    missing = missing_cuda_library()
    return ("CUDA provider available; " + (f"{missing} cannot be loaded" if missing else "its libraries load")
            + (" (preloaded from the nvidia-* packages where installed)" if state.get("preloaded") else "")
            + (f"; preload: {state['error']}" if state.get("error") else ""))


def missing_cuda_library() -> str | None:
    """The first library onnxruntime's CUDA provider needs that cannot be loaded here (``None``: all load,
    or there is no CUDA provider library to ask)."""
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    return first_unloadable(elf_needed(lib)) if lib.is_file() else None


def first_unloadable(names) -> str | None:
    import ctypes
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            return name
    return None


def elf_needed(path: Path) -> list[str]:
    """The ``DT_NEEDED`` libraries of a 64-bit little-endian ELF shared object (what the loader must find
    for it), read from its dynamic segment; ``[]`` for anything else."""
    import struct
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    loads, dynamic = [], None
    for i in range(phnum):
        kind, _, offset, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if kind == 1:
            loads.append((vaddr, offset, filesz))
        elif kind == 2:
            dynamic = (offset, filesz)
    if dynamic is None:
        return []
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + k) for k in range(0, dynamic[1], 16)]
    strtab = next((v for tag, v in entries if tag == 5), None)
    base = next((off + strtab - va for va, off, size in loads if strtab is not None and va <= strtab < va + size), None)
    if base is None:
        return []
    return [data[base + v:data.index(b"\0", base + v)].decode() for tag, v in entries if tag == 1]


def _port(arg) -> Port:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return Port(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), at most 300 characters."""
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


register("onnxruntime", OrtSession.open)
