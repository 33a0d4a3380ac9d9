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


def make_model(path, latent_dim=8, channels=1, height=6, width=6, prior="normal", seed=0,
               metadata=None, drop=(), z_name="z", image_name="image", fixed_batch=False):
    """Write a contract-following generator; ``metadata`` overrides, ``drop`` removes keys."""
    rng = np.random.default_rng(seed)
    out = channels * height * width
    w = numpy_helper.from_array((rng.standard_normal((latent_dim, out)) * 0.5).astype(np.float32), "W")
    b = numpy_helper.from_array((rng.standard_normal(out) * 0.1).astype(np.float32), "B")
    shape = numpy_helper.from_array(np.array([-1, channels, height, width], np.int64), "shape")
    batch = 1 if fixed_batch else "batch"
    graph = helper.make_graph(
        [helper.make_node("Gemm", [z_name, "W", "B"], ["h"]),
         helper.make_node("Tanh", ["h"], ["t"]),
         helper.make_node("Reshape", ["t", "shape"], [image_name])],
        "tiny",
        [helper.make_tensor_value_info(z_name, TensorProto.FLOAT, [batch, latent_dim])],
        [helper.make_tensor_value_info(image_name, TensorProto.FLOAT, [batch, channels, height, width])],
        [w, b, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"dcgan_deploy.format": "1", "architecture": "tiny-gemm", "latent_dim": str(latent_dim),
            "latent_prior": prior, "channels": str(channels), "height": str(height), "width": str(width),
            "value_range": "[-1, 1]", "dataset": "none", "train_step": "0",
            "parity": json.dumps({"passed": True, "providers": ["CPUExecutionProvider"]})}
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
