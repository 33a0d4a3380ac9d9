"""A Triton Inference Server model-repository entry for an exported model (onnxruntime backend).

The entry's graph is the exported one with the uint8 conversion appended -- ``(x + 1) * 127.5`` in
float32, rounded half to even, clipped, cast, and transposed to ``[n, H, W, C]`` -- so that Triton answers
with the very bytes ``dcgan-deploy generate`` writes, and describes the model as ``dcgan-deploy serve``
does: input ``z`` FP32 ``[-1, latent_dim]`` (and a conditional model's ``label`` INT64, one per image), output
``image`` UINT8 ``[-1, H, W, C]``. (The server also
takes ``seed`` and ``n``; Triton has no numpy to draw them with.) Needs onnx (the ``train`` extra), as
``export`` does.
"""
from __future__ import annotations

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
  }}{label}
]
output [
  {{
    name: "image"
    data_type: TYPE_UINT8
    dims: [ {height}, {width}, {channels} ]
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
    # a conditional model's int64 label, one per image: [batch] in the graph, so each item is reshaped to a scalar
    label = ',\n  {\n    name: "label"\n    data_type: TYPE_INT64\n    dims: [ 1 ]\n    reshape: { shape: [ ] }\n  }' \
        if gen.classes else ""
    return CONFIG.format(name=name, max_batch=max_batch, latent_dim=gen.latent_dim, channels=gen.channels,
                         height=gen.height, width=gen.width, preferred=preferred, label=label)


def write_model_repository(onnx_path: Path, repo: Path, name: str, max_batch: int = 1024) -> Path:
    """Write ``repo/<name>/1/model.onnx`` (the graph with its uint8 tail) and ``repo/<name>/config.pbtxt``;
    returns the entry folder."""
    gen = Generator.load(onnx_path, device="cpu")
    entry = repo / name
    (entry / "1").mkdir(parents=True, exist_ok=True)
    with atomic_path(entry / "1" / "model.onnx") as tmp:
        with_uint8_output(onnx_path, tmp)
    write_bytes(entry / "config.pbtxt", config_pbtxt(gen, name, max_batch).encode())
    return entry


def with_uint8_output(src: Path, dest: Path) -> None:
    """The exported graph, its float ``image`` [n, C, H, W] turned into uint8 [n, H, W, C] exactly as
    ``images.to_uint8`` does."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    for node in g.node:  # the float output becomes an inner value
        node.output[:] = ["image_float" if o == "image" else o for o in node.output]
    g.initializer.extend([numpy_helper.from_array(np.array(1.0, np.float32), "u8_one"),
                          numpy_helper.from_array(np.array(127.5, np.float32), "u8_scale"),
                          numpy_helper.from_array(np.array(0.0, np.float32), "u8_lo"),
                          numpy_helper.from_array(np.array(255.0, np.float32), "u8_hi")])
    g.node.extend([helper.make_node("Add", ["image_float", "u8_one"], ["u8_a"]),
                   helper.make_node("Mul", ["u8_a", "u8_scale"], ["u8_b"]),
                   helper.make_node("Round", ["u8_b"], ["u8_c"]),          # half to even, as numpy's rint
                   helper.make_node("Clip", ["u8_c", "u8_lo", "u8_hi"], ["u8_d"]),
                   helper.make_node("Cast", ["u8_d"], ["u8_e"], to=TensorProto.UINT8),
                   helper.make_node("Transpose", ["u8_e"], ["image"], perm=[0, 2, 3, 1])])
    out = g.output[0]
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]  # [batch, C, H, W]
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("image", TensorProto.UINT8, [dims[0], dims[2], dims[3], dims[1]]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
