"""A Triton Inference Server model-repository entry for an exported model (onnxruntime backend)."""
from __future__ import annotations

import shutil
from pathlib import Path

from .files import atomic_path, write_bytes
from .runtime import Generator

CONFIG = """\
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch}
input [
  {{
    name: "z"
    data_type: TYPE_FP32
    dims: [ {latent_dim} ]
  }}
]
output [
  {{
    name: "image"
    data_type: TYPE_FP32
    dims: [ {channels}, {height}, {width} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: 200
}}
instance_group [
  {{
    kind: KIND_AUTO
    count: 1
  }}
]
"""


def config_pbtxt(gen: Generator, name: str, max_batch: int = 1024) -> str:
    """The ``config.pbtxt`` text for ``gen`` (Triton's dims exclude the batch axis)."""
    preferred = ", ".join(str(b) for b in (64, 256, max_batch) if b <= max_batch)
    return CONFIG.format(name=name, max_batch=max_batch, latent_dim=gen.latent_dim, channels=gen.channels,
                         height=gen.height, width=gen.width, preferred=preferred)


def write_model_repository(onnx_path: Path, repo: Path, name: str, max_batch: int = 1024) -> Path:
    """Write ``repo/<name>/1/model.onnx`` and ``repo/<name>/config.pbtxt``; returns the entry folder."""
    gen = Generator.load(onnx_path, device="cpu")
    entry = repo / name
    (entry / "1").mkdir(parents=True, exist_ok=True)
    with atomic_path(entry / "1" / "model.onnx") as tmp:
        shutil.copyfile(onnx_path, tmp)
    write_bytes(entry / "config.pbtxt", config_pbtxt(gen, name, max_batch).encode())
    return entry
