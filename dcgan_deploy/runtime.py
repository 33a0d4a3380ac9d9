"""The runtime: one inference session that turns seeds or latents into images.

numpy + onnxruntime only; importing this module never imports torch, onnx or click. The engine
behind the session (onnxruntime by default) sits behind ``session.Session``.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import bundled, cpu, int8, modelfile
from .images import to_uint8
from .latent import (LatentStream, check_count, check_seed, check_truncation, path, random_seed, seed_labels,
                     truncate)
from .edits import Direction, from_metadata
from .modelfile import ModelError, check_classes, check_directions, check_metadata, json_entry
from .session import CPU, CUDA, Session, cuda_status, first_line, open_session

__all__ = ["CpuDependentWarning", "Generator", "ModelError", "UnverifiedModelWarning", "check_threads", "first_line"]

DEVICES = ("auto", "cpu", "cuda")
# Bounds on what one call may ask for: past them a request is refused with what to use instead.
MAX_BATCH_BYTES = 2 * 1024**3   # float32 images of one onnxruntime call
MAX_ARRAY_BYTES = 8 * 1024**3   # uint8 images ``generate`` returns in one array
MAX_THREADS_PER_CORE = 4
MAX_FRAMES = 1000               # frames of one interpolation


class UnverifiedModelWarning(UserWarning):
    """The model's parity was not proven at export time (e.g. fp16 without CUDA)."""


class CpuDependentWarning(UserWarning):
    """An int8 file whose integer sums can saturate on some CPUs: its images depend on the CPU."""


class Generator:
    """An exported DCGAN generator in an inference session (``session.Session``; onnxruntime's by default).

    Create with ``Generator.load``. Calls are thread-safe: the session is shared and
    every call draws its latents from its own seeded stream.
    """

    def __init__(self, session: Session, path: Path, metadata: dict[str, str], precision: str = "float32"):
        self.session = session
        self.path = path
        self.metadata = metadata
        self.precision = precision  # what the graph computes in (read from the graph, not the metadata)
        self.latent_dim = int(metadata["latent_dim"])
        self.latent_prior = metadata["latent_prior"]
        self.channels = int(metadata["channels"])
        self.height = int(metadata["height"])
        self.width = int(metadata["width"])
        self.parity: dict = json_entry(metadata, "parity", path) or {}
        self.evaluation: dict | None = json_entry(metadata, "evaluation", path)
        self.integer_sums: dict | None = None  # an int8 graph's bounds (``int8.report``), set by ``load``
        entry = check_directions(metadata, path)
        self.directions: list[Direction] = from_metadata(entry) if entry else []  # named latent directions
        self.classes: tuple[str, ...] = check_classes(metadata, path)  # a conditional model's; label i = classes[i]

    # ---- construction -------------------------------------------------------------
    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str = "auto",
             threads: int | None = None, engine: str = "onnxruntime",
             cuda_options: dict[str, str] | None = None) -> "Generator":
        """Open a ``.onnx`` file or a bundled model by name (``None``: the default).

        ``device``: ``auto`` (CUDA when it is really active, else CPU), ``cpu`` or
        ``cuda`` (CUDA or a ``ModelError`` saying why). ``threads``: onnxruntime's
        intra-op thread count (default: onnxruntime's choice). ``engine``: a registered
        ``session`` engine (``session.ENGINES``). ``cuda_options``: onnxruntime's CUDA provider options
        (``{"cudnn_conv_algo_search": "HEURISTIC"}``, say) over ``session.CUDA_OPTIONS``.

        The file is checked before it runs: its metadata (``modelfile.check_metadata``), its graph
        (no random or training-only op), and its input and output against the metadata.
        """
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        if threads is not None:
            threads = check_threads(threads)
        path = bundled.resolve(model)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        graph = modelfile.read(path)
        metadata = check_metadata(graph.metadata, path)
        modelfile.check_ops(graph)
        session = open_session(path, device, threads, engine, cuda_options)
        _check_graph(session, path, metadata)
        gen = cls(session, path, metadata, graph.precision)
        if gen.precision == "int8":
            gen.integer_sums = int8.report(graph, per_layer=False)
            if not gen.integer_sums["portable"]:
                warnings.warn(f"{path}: its images depend on the CPU: {gen.integer_sums['reason']}",
                              CpuDependentWarning, stacklevel=2)
        if gen.parity.get("verified") is False:
            warnings.warn(f"{path}: parity of this model is unverified "
                          f"({modelfile.printable(gen.parity.get('reason', 'no reason given'), 300)})",
                          UnverifiedModelWarning, stacklevel=2)
        return gen

    # ---- facts ----------------------------------------------------------------------
    @property
    def provider(self) -> str:
        """What runs the graph (onnxruntime: ``CUDAExecutionProvider`` or ``CPUExecutionProvider``)."""
        return self.session.provider

    @property
    def device(self) -> str:
        return self.session.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of the uint8 images ``generate`` returns."""
        return self.height, self.width, self.channels

    # ---- generation -----------------------------------------------------------------
    def latents(self, n: int, seed: int, truncation: float = 1.0) -> np.ndarray:
        """``n`` latents for ``seed`` from the model's prior: float32 ``[n, latent_dim]`` (``truncation``: see
        ``latent.truncate``)."""
        return truncate(LatentStream(check_seed(seed), self.latent_dim, self.latent_prior).take(check_count(n)),
                        truncation)

    def latent(self, seed: int, index: int = 0, truncation: float = 1.0) -> np.ndarray:
        """The latent of image ``index`` of ``seed``'s grid: float32 ``[latent_dim]``, row ``index`` of
        ``latents(index + 1, seed)``. How ``edit``, the demo and the web page pick one image to work on."""
        return self.latents(index + 1, seed, truncation)[index]

    def labels(self, n: int, seed: int | None = None, label=None) -> np.ndarray | None:
        """A conditional model's int64 labels ``[n]`` for ``n`` images of ``seed``: ``label`` a class (index or
        name) for all of them, one per image (a sequence of ``n``, or of 1), or ``None``: drawn from the seed
        (``latent.seed_labels``). ``None`` for an unconditional model."""
        return self._label_chunks(n, seed, label)(0, n)

    def _label_chunks(self, n: int, seed: int | None, label):
        """``label`` checked for ``n`` images now -> ``chunk(start, count)``, the labels of those images
        (memory bounded by the chunk unless the caller gave one label per image)."""
        if not self.classes:
            if label is not None:
                raise ValueError(f"{self.path.name} is not class-conditional: it takes no label")
            return lambda start, count: None
        if label is None:
            return lambda start, count: seed_labels(count, 0 if seed is None else seed, len(self.classes), start)
        if isinstance(label, (str, int, np.integer)) and not isinstance(label, bool):
            index = self.class_index(label)
            return lambda start, count: np.full(count, index, np.int64)
        if isinstance(label, np.ndarray) and label.ndim != 1 or not hasattr(label, "__len__") or isinstance(label, dict):
            raise ValueError(f"label must be a class, or one class per image, got {type(label).__name__}")
        if len(label) not in (1, n):
            raise ValueError(f"{len(label)} labels for {n} images; give one, or one per image")
        chosen = np.array([self.class_index(x) for x in label], np.int64)
        if len(chosen) == 1:
            return lambda start, count: np.full(count, chosen[0], np.int64)
        return lambda start, count: chosen[start:start + count]

    def class_index(self, label) -> int:
        """A class by index (``7``, ``"7"``) or by name -> its index; ValueError naming the classes otherwise."""
        if isinstance(label, str) and label in self.classes:
            return self.classes.index(label)
        text = label if isinstance(label, str) else None
        if text is not None and text.isascii() and text.isdigit():
            label = int(text)
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(self.classes):
            return int(label)
        shown = ", ".join(self.classes) if len(self.classes) <= 20 else ", ".join(self.classes[:20]) + ", ..."
        raise ValueError(f"unknown class {label!r:.60}: this model's classes are {shown} (or their indices 0 to "
                         f"{len(self.classes) - 1})")

    def run(self, z: np.ndarray, label: np.ndarray | None = None, label_to: np.ndarray | None = None,
            mix: np.ndarray | None = None) -> np.ndarray:
        """Float32 latents ``[n, latent_dim]`` (and a conditional model's int64 labels ``[n]``) -> float32
        images ``[n, C, H, W]`` in [-1, 1]. ``label_to`` (int64 ``[n]``) and ``mix`` (float32 ``[n]``, 0 to 1):
        each image's class moved a share ``mix`` of the way from ``label`` to ``label_to`` (``class_walk``).

        A model whose output holds NaN or infinite values (broken weights) raises ``ModelError``
        instead of passing garbage on."""
        self._check_latents(z)
        self.check_batch_size(len(z))
        self._check_labels(label, len(z))
        walk = None
        if label_to is not None or mix is not None:
            self._check_walk(label_to, mix, len(z))
            walk = (label_to, mix)
        out = self.session.run(z, label) if walk is None else self.session.run(z, label, walk)
        if not np.isfinite(out).all():
            raise ModelError(f"{self.path}: the model produced NaN or infinite values (its weights are broken); "
                             "no images were written")
        return out

    def images(self, z: np.ndarray, batch_size: int = 64, label=None) -> Iterator[np.ndarray]:
        """Given latents ``[n, latent_dim]`` (and a conditional model's ``label``: a class, or one per row;
        default the rows' turn, as for seed 0) -> uint8 chunks ``[<=batch_size, H, W, C]``, one call each."""
        self._check_latents(z)
        batch_size = self.check_batch_size(batch_size)
        labels = self._label_chunks(len(z), 0, label)  # checked now
        return (to_uint8(self.run(z[start:start + batch_size], labels(start, len(z[start:start + batch_size]))))
                for start in range(0, len(z), batch_size))

    def iter_generate(self, n: int, seed: int | None = None, batch_size: int = 64,
                      truncation: float = 1.0, label=None) -> Iterator[np.ndarray]:
        """Yield uint8 chunks ``[<=batch_size, H, W, C]`` whose concatenation is ``generate(n, seed)``.

        Memory is bounded by one chunk, whatever ``n`` is.
        """
        n, batch_size = check_count(n), self.check_batch_size(batch_size)
        truncation = check_truncation(truncation)
        seed = random_seed() if seed is None else check_seed(seed)
        labels = self._label_chunks(n, seed, label)
        stream = LatentStream(seed, self.latent_dim, self.latent_prior)
        return (to_uint8(self.run(truncate(stream.take(min(batch_size, n - start)), truncation),
                                  labels(start, min(batch_size, n - start))))
                for start in range(0, n, batch_size))  # arguments checked now, images made as they are asked for

    def generate(self, n: int, seed: int | None = None, batch_size: int = 64, truncation: float = 1.0,
                 label=None) -> np.ndarray:
        """``n`` images for ``seed`` (random when ``None``): uint8 ``[n, H, W, C]``. A conditional model's
        ``label``: a class (index or name) for all, one per image, or ``None``: the classes in turn from
        the seed (``latent.seed_labels``)."""
        n = check_count(n)
        size = n * self.height * self.width * self.channels
        if size > MAX_ARRAY_BYTES:
            raise ValueError(f"n={n} images would take {size / 1e9:.1f} GB in one array (limit "
                             f"{MAX_ARRAY_BYTES / 1e9:.1f} GB); stream them with iter_generate, or write a .npy file")
        return np.concatenate(list(self.iter_generate(n, seed, batch_size, truncation, label)))

    def interpolate(self, seeds: list[int], frames: int, method: str = "slerp", truncation: float = 1.0,
                    label=None) -> np.ndarray:
        """A walk through the seeds' latents (each seed's first latent, as ``generate(1, seed)`` draws it):
        ``frames`` frames from each seed to the next, then the last seed; uint8 ``[(len(seeds) - 1) * frames + 1,
        H, W, C]``. The path for the CLI's ``interpolate`` and the demo alike. A conditional model walks in one
        class: ``label``, or the first seed's (``generate(1, seeds[0])``'s)."""
        if len(seeds) < 2:
            raise ValueError("an interpolation needs at least two seeds")
        total = (len(seeds) - 1) * check_count(frames, "frames") + 1
        if total > MAX_FRAMES:
            raise ValueError(f"{total} frames requested; the limit is {MAX_FRAMES} (fewer seeds or frames)")
        z = path([self.latents(1, s, truncation)[0] for s in seeds], frames, method)
        one = None if not self.classes else self.labels(1, seeds[0], None if label is None else [label])[0]
        return np.concatenate(list(self.images(z, label=None if one is None else int(one))))

    def class_walk(self, seed: int, label, label_to, frames: int = 16, truncation: float = 1.0) -> np.ndarray:
        """One latent (``generate(1, seed)``'s) walked from class ``label`` to class ``label_to``: its class
        embedding moved in ``frames`` equal steps; uint8 ``[frames + 1, H, W, C]``, the first image exactly
        ``generate(1, seed, label=label)``'s and the last ``generate(1, seed, label=label_to)``'s."""
        if not self.classes:
            raise ValueError(f"{self.path.name} is not class-conditional: it has no classes to walk between")
        if not getattr(self.session, "walks", False):
            raise ValueError(f"{self.path.name} takes no class walk (no label_to and mix inputs): export it again "
                             "with this version of dcgan-deploy")
        frames = check_count(frames, "frames")
        if frames + 1 > MAX_FRAMES:
            raise ValueError(f"{frames + 1} frames requested; the limit is {MAX_FRAMES}")
        a, b = self.class_index(label), self.class_index(label_to)
        z = np.repeat(self.latents(1, seed, truncation), frames + 1, axis=0)
        # the last frame is label_to's own image (mix 0 from it), not e + 1 * (e_to - e) rounded
        labels = np.array([a] * frames + [b], np.int64)
        mix = np.append(np.arange(frames, dtype=np.float64) / frames, 0).astype(np.float32)
        return to_uint8(self.run(z, labels, np.full(frames + 1, b, np.int64), mix))

    def check_batch_size(self, batch_size, what: str = "batch_size") -> int:
        """A batch size whose float32 images fit ``MAX_BATCH_BYTES``, or a ValueError saying the largest that does."""
        batch_size = check_count(batch_size, what)
        per_image = 4 * self.channels * self.height * self.width
        if batch_size * per_image > MAX_BATCH_BYTES:
            raise ValueError(f"{what} {batch_size} would need {batch_size * per_image / 1e9:.1f} GB per onnxruntime "
                             f"call; use at most {MAX_BATCH_BYTES // per_image} for {self.height}x{self.width} images")
        return batch_size

    def _check_labels(self, label, n: int) -> None:
        if not self.classes:
            if label is not None:
                raise ValueError(f"{self.path.name} is not class-conditional: it takes no label")
            return
        if label is None:
            raise ValueError(f"{self.path.name} is class-conditional ({len(self.classes)} classes): give labels")
        if not (isinstance(label, np.ndarray) and label.dtype == np.int64 and label.shape == (n,)):
            raise ValueError(f"labels must be an int64 array [{n}], got "
                             f"{getattr(label, 'dtype', type(label).__name__)} {list(getattr(label, 'shape', []))}")
        if len(label) and not (0 <= label.min() and label.max() < len(self.classes)):
            raise ValueError(f"labels must be class indices from 0 to {len(self.classes) - 1}")

    def _check_walk(self, label_to, mix, n: int) -> None:
        if not self.classes or not getattr(self.session, "walks", False):
            raise ValueError(f"{self.path.name} takes no class walk (label_to and mix)")
        self._check_labels(label_to, n)
        if not (isinstance(mix, np.ndarray) and mix.dtype == np.float32 and mix.shape == (n,)):
            raise ValueError(f"mix must be a float32 array [{n}], got "
                             f"{getattr(mix, 'dtype', type(mix).__name__)} {list(getattr(mix, 'shape', []))}")
        if not (np.isfinite(mix).all() and (mix >= 0).all() and (mix <= 1).all()):
            raise ValueError("mix must be from 0 to 1 (the share of the way from label to label_to)")

    def _check_latents(self, z) -> None:
        if not isinstance(z, np.ndarray):
            raise ValueError(f"latents must be a numpy array, got {type(z).__name__}")
        if z.dtype != np.float32:
            raise ValueError(f"latents must be float32, got {z.dtype}")
        if z.ndim != 2 or z.shape[1] != self.latent_dim or z.shape[0] < 1:
            raise ValueError(f"latents must have shape [n >= 1, {self.latent_dim}], got {list(z.shape)}")
        if not np.isfinite(z).all():
            raise ValueError("latents contain NaN or infinite values")

    def info(self) -> dict:
        """Everything ``dcgan-deploy info`` shows, as plain data."""
        facts = {
            "path": str(self.path),
            "metadata": {k: v for k, v in self.metadata.items()
                         if k not in ("parity", "evaluation", "directions", "classes")},
            "precision": self.precision,
            "parity": self.parity,
            "directions": [{k: v for k, v in d.to_json().items() if k != "vector"} for d in self.directions],
            "classes": list(self.classes),
            "providers": self.session.facts(),
            "cuda": cuda_status(),
            "engine": self.session.engine,
            "cpu": cpu.features(),
        }
        if self.integer_sums is not None:
            facts["integer_sums"] = self.integer_sums
        if self.evaluation is not None:
            facts["evaluation"] = self.evaluation
        return facts

    def __repr__(self) -> str:
        return (f"Generator({str(self.path)!r}, {self.metadata['architecture']}, z={self.latent_dim}, "
                f"image={self.channels}x{self.height}x{self.width}, provider={self.provider})")


# ---- opening and checking a session ------------------------------------------------
def check_threads(threads) -> int:
    """An intra-op thread count from 1 to ``MAX_THREADS_PER_CORE`` per core of this machine."""
    threads = check_count(threads, "threads")
    limit = MAX_THREADS_PER_CORE * (os.cpu_count() or 1)
    if threads > limit:
        raise ValueError(f"threads={threads} is more than {limit} ({MAX_THREADS_PER_CORE} per core of this machine's "
                         f"{os.cpu_count()}); use at most {limit}, or leave it unset for onnxruntime's choice")
    return threads


def _check_graph(session: Session, path: Path, meta: dict[str, str]) -> None:
    ins, outs = session.inputs(), session.outputs()
    want = ["z", "label"] if "classes" in meta else ["z"]
    if [i.name for i in ins] != want or [o.name for o in outs] != ["image"]:
        raise ModelError(f"{path}: graph must have input{'s' if len(want) > 1 else ''} {' and '.join(map(repr, want))} "
                         f"and one output 'image'{' (its metadata names classes)' if len(want) > 1 else ''}, has "
                         f"inputs {[i.name for i in ins]} and outputs {[o.name for o in outs]}")
    if len(ins) > 1 and (ins[1].dtype != "int64" or len(ins[1].shape) != 1 or ins[1].shape[0] is not None):
        raise ModelError(f"{path}: 'label' must be int64 [batch], is {ins[1].dtype} {list(ins[1].shape)}")
    z, image = ins[0], outs[0]
    want_z = [int(meta["latent_dim"])]
    want_img = [int(meta["channels"]), int(meta["height"]), int(meta["width"])]
    for port, want in ((z, want_z), (image, want_img)):
        if port.dtype != "float32":
            raise ModelError(f"{path}: '{port.name}' must be float32, is {port.dtype}")
        shown = ["batch" if d is None else d for d in port.shape]
        if len(port.shape) != len(want) + 1 or list(port.shape[1:]) != want:
            raise ModelError(f"{path}: '{port.name}' has shape {shown}, metadata says [batch, "
                             f"{', '.join(map(str, want))}]")
        if port.shape[0] is not None:
            raise ModelError(f"{path}: '{port.name}' has a fixed batch size {port.shape[0]}; it must be dynamic")
