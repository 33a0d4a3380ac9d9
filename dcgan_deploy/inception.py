"""The FID Inception network, from the standard weights file, as an ONNX feature extractor.

``dcgan-deploy evaluate --features pt_inception-2015-12-05-6726825d.pth`` accepts the
Inception v3 weights that pytorch-fid (``pt_inception-…pth``) and torch-fidelity
(``weights-inception-…pth``) download: the TensorFlow FID network converted to PyTorch,
with its ``fc`` over 1008 classes. This module rebuilds that network in plain PyTorch
(no torchvision: the same blocks, names and the TensorFlow patches that pytorch-fid and
torch-fidelity apply — average pools that leave the padding out, a max pool in the last
block), loads the file strictly and exports it once to ONNX with the extractor contract
of :mod:`dcgan_deploy.evaluate`:

- input ``image`` ``[N, 3, H, W]`` in [-1, 1] (``evaluate`` repeats a grayscale image's
  channel), resized inside to 299×299 bilinearly as pytorch-fid does
  (``align_corners=False``; torch-fidelity resizes with its own TensorFlow-1 bilinear,
  which differs slightly, so its FIDs are close to but not equal to these);
- outputs ``features`` ``[N, 2048]`` (pool3, what FID and KID use) and ``probs``
  ``[N, 1008]``: the softmax of pool3 times ``fc.weight`` without the bias, as the
  original Inception Score code and torch-fidelity's ``logits_unbiased`` compute it.

The export lands in a cache folder (``$DCGAN_DEPLOY_CACHE``, else
``$XDG_CACHE_HOME/dcgan-deploy``, else ``~/.cache/dcgan-deploy``) named by the weights'
SHA-256, so a second evaluation reuses it. Needs torch (the ``train`` extra) for the
conversion only; evaluating with the converted file needs onnxruntime alone.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .evaluate import file_sha256, inception_cache_path
from .files import atomic_path
from .runtime import ModelError, first_line

INPUT_SIZE = 299
NUM_CLASSES = 1008
FEATURE_DIM = 2048
BATCH_SIZE = 50  # images per extractor call in `evaluate` (pytorch-fid's default)


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):  # TensorFlow's average pool leaves the zero padding out of the mean
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x),
                          self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([self.branch1x1(x),
                          self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                          dbl,
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool``: the second E block of the TensorFlow network pools by max, not average."""

    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
                          self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Inception v3 as the FID weights file holds it: ``[N, 3, 299, 299]`` in [-1, 1] ->
    (pool3 features ``[N, 2048]``, unbiased logits ``[N, 1008]``)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        features = x.mean(dim=(2, 3))
        return features, features @ self.fc.weight.T


class InceptionExtractor(nn.Module):
    """The extractor contract: ``[N, 3, H, W]`` in [-1, 1] -> (features, class probabilities)."""

    def __init__(self, net: FIDInception):
        super().__init__()
        self.net = net

    def forward(self, image):
        x = F.interpolate(image, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        features, logits = self.net(x)
        return features, torch.softmax(logits, dim=1)


def load_weights(path: str | os.PathLike) -> FIDInception:
    """The network with the weights of ``path`` (strict: every tensor named and shaped as the FID file's)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ModelError(f"{path}: not a readable PyTorch weights file (an empty file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: not a readable PyTorch weights file ({first_line(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds no state dict of tensors")
    net = FIDInception().eval()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state)
                       if not torch.is_tensor(state[k]) or tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or misshaped:
        detail = "; ".join(f"{what} {len(keys)} (e.g. {keys[0]})" for what, keys in
                           (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)) if keys)
        raise ModelError(f"{path}: not the FID Inception weights of pytorch-fid / torch-fidelity ({detail})")
    net.load_state_dict(state, strict=False)  # strict apart from num_batches_tracked, checked above
    return net


def export_extractor(weights: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Export the network of ``weights`` to ``dest`` (ONNX, extractor contract, metadata), atomically."""
    import onnx

    weights, dest = Path(weights), Path(dest)
    model = InceptionExtractor(load_weights(weights)).eval()
    example = torch.zeros(2, 3, 64, 64)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=["image"], output_names=["features", "probs"],
                                    dynamic_shapes={"image": dims}, dynamo=True, verbose=False)
    with atomic_path(dest) as tmp:
        program.save(str(tmp))
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {
            "name": "inception-v3-fid", "source": weights.name, "source_sha256": file_sha256(weights),
            "feature_dim": str(FEATURE_DIM), "classes": str(NUM_CLASSES), "input_range": "[-1, 1]",
            "image_shape": f"3,{INPUT_SIZE},{INPUT_SIZE} (any size, resized inside, bilinear as pytorch-fid)",
            "probs": "softmax of pool3 x fc.weight, no bias (the Inception Score's)",
            "batch_size": str(BATCH_SIZE)})
        onnx.save(proto, str(tmp))
    return dest


def cached_extractor(weights: str | os.PathLike) -> Path:
    """The ONNX export of ``weights`` in the cache (``evaluate.inception_cache_path``), made on first use."""
    dest = inception_cache_path(Path(weights))
    return dest if dest.is_file() else export_extractor(weights, dest)
