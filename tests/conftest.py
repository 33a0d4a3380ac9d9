"""Shared fixtures: tiny ONNX generators that follow the model-file contract.

They are built with onnx.helper (no torch): z -> Gemm -> Tanh -> Reshape -> image. Also
``load_script``: a repository script (not a package module) imported by its path.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_script(relative: str, name: str):
    """The module of the script at ``relative`` (from the repository root), imported as ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_ort_web(name: str, script: str, *args) -> dict:
    """``script`` (an ES module importing onnxruntime-web and ``./dcgan_deploy/js/dcgan.mjs``) run by Node from the
    repository root with ``args``; its stdout read as JSON. Skips, saying why, without Node or `npm ci`."""
    import shutil
    import subprocess
    node = shutil.which("node")
    if not node or not (ROOT / "node_modules" / "onnxruntime-web").is_dir():
        pytest.skip("needs Node and `npm ci` (onnxruntime-web in node_modules)")
    path = ROOT / f"tmp_{name}.mjs"
    path.write_text(script)
    try:
        r = subprocess.run([node, str(path), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    finally:
        path.unlink()
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def recorded_weights(name: str, folder) -> Path:
    """A bundled model's trained weights (``benchmarks/weights.py``: out of the commit its record names);
    skips, saying why, where the source is not a git checkout holding that commit (an installed package)."""
    found = load_script("benchmarks/weights.py", "bench_weights").recorded_weights(name.removesuffix("-int8"), folder)
    if found is None:
        pytest.skip(f"{name}'s weights live in a commit this is not a git checkout of")
    return found


def make_model(path, latent_dim=8, channels=1, height=6, width=6, prior="normal", seed=0,
               metadata=None, drop=(), z_name="z", image_name="image", fixed_batch=False, classes=None):
    """Write a contract-following generator; ``metadata`` overrides, ``drop`` removes keys. ``classes``: a
    class-conditional one (an int64 ``label`` input whose class adds its own row to the Gemm's output)."""
    rng = np.random.default_rng(seed)
    out = channels * height * width
    w = numpy_helper.from_array((rng.standard_normal((latent_dim, out)) * 0.5).astype(np.float32), "W")
    b = numpy_helper.from_array((rng.standard_normal(out) * 0.1).astype(np.float32), "B")
    shape = numpy_helper.from_array(np.array([-1, channels, height, width], np.int64), "shape")
    batch = 1 if fixed_batch else "batch"
    nodes = [helper.make_node("Gemm", [z_name, "W", "B"], ["h"])]
    inputs = [helper.make_tensor_value_info(z_name, TensorProto.FLOAT, [batch, latent_dim])]
    inits = [w, b, shape]
    if classes:
        inits.append(numpy_helper.from_array(rng.standard_normal((len(classes), out)).astype(np.float32), "E"))
        nodes = [nodes[0], helper.make_node("Gather", ["E", "label"], ["e"]), helper.make_node("Add", ["h", "e"], ["hc"])]
        inputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, [batch]))
    graph = helper.make_graph(
        nodes + [helper.make_node("Tanh", ["hc" if classes else "h"], ["t"]),
                 helper.make_node("Reshape", ["t", "shape"], [image_name])],
        "tiny", inputs,
        [helper.make_tensor_value_info(image_name, TensorProto.FLOAT, [batch, channels, height, width])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"dcgan_deploy.format": "1", "architecture": "tiny-gemm", "latent_dim": str(latent_dim),
            "latent_prior": prior, "channels": str(channels), "height": str(height), "width": str(width),
            "value_range": "[-1, 1]", "dataset": "none", "train_step": "0",
            "parity": json.dumps({"passed": True, "providers": ["CPUExecutionProvider"]})}
    if classes:
        meta["classes"] = json.dumps(list(classes))
    meta.update(metadata or {})
    for key in drop:
        meta.pop(key)
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_model(tmp_path):
    return make_model(tmp_path / "tiny.onnx")


@pytest.fixture
def rgb_model(tmp_path):
    return make_model(tmp_path / "rgb.onnx", latent_dim=5, channels=3, height=4, width=5, prior="uniform")
