"""Reference outputs of the FID Inception network, made with torch-fidelity's implementation.

    python tests/inception_reference.py PATH/TO/UNPACKED/torch_fidelity   # -> tests/data/inception_reference.*

The real weights file cannot be fetched here, so both implementations get the same seeded
random weights (``seeded_state``), saved as a ``.pth`` that torch-fidelity's
``FeatureExtractorInceptionV3`` loads itself. Its pool3 features and unbiased logits for
two seeded 299×299 images, and its state dict's names and shapes, are stored; the tests
hold ``dcgan_deploy.inception`` to them. torch-fidelity 0.4.0 was used (installed without
its dependencies: its Inception module needs only torch; its package ``__init__`` would
import torchvision, so the module is loaded on its own).
"""
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent / "data"


def seeded_state(names_shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights that keep activations in range through the network, from names and shapes alone."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(names_shapes):
        shape = tuple(names_shapes[name])
        if name.endswith("num_batches_tracked"):
            continue
        r = torch.randn(shape, generator=g)
        if name.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            state[name] = r * (2.0 / fan_in) ** 0.5
        elif name.endswith("bn.weight"):
            state[name] = 1 + 0.1 * r
        elif name.endswith("running_var"):
            state[name] = 1 + 0.1 * r.abs()
        elif name == "fc.weight":
            state[name] = 0.02 * r
        else:  # bn.bias, running_mean, fc.bias
            state[name] = 0.1 * r
    return state


def seeded_images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 3, 299, 299), dtype=np.uint8)


def _load_torch_fidelity(root: Path):
    """torch_fidelity.feature_extractor_inceptionv3 without the package's __init__."""
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = [str(root)]
    sys.modules["torch_fidelity"] = pkg
    spec = importlib.util.spec_from_file_location("torch_fidelity.feature_extractor_inceptionv3",
                                                  root / "feature_extractor_inceptionv3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(root: Path) -> None:
    tf = _load_torch_fidelity(root)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        probe = _state_names(tf, Path(tmp))
        state = seeded_state(probe)
        path = Path(tmp) / "weights.pth"
        torch.save(state, path)
        net = tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                             feature_extractor_weights_path=str(path))
        with torch.no_grad():
            features, logits = net(torch.from_numpy(seeded_images()))
    DATA.mkdir(exist_ok=True)
    np.savez_compressed(DATA / "inception_reference.npz", features=features.numpy(), logits=logits.numpy())
    (DATA / "inception_keys.json").write_text(json.dumps(probe, indent=0, sort_keys=True) + "\n")
    print(f"wrote {DATA / 'inception_reference.npz'} and inception_keys.json ({len(probe)} tensors)")


def _state_names(tf, tmp: Path) -> dict[str, list]:
    """Names and shapes of torch-fidelity's network (it insists on loading weights in its constructor)."""
    cls = tf.FeatureExtractorInceptionV3
    original, real_load = torch.nn.Module.load_state_dict, torch.load
    try:
        torch.nn.Module.load_state_dict = lambda self, *a, **k: None  # construct without weights
        torch.load = lambda *a, **k: {}
        net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp / "none.pth"))
    finally:
        torch.nn.Module.load_state_dict = original
        torch.load = real_load
    return {k: list(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
