"""The FID Inception network from its weights file: the same outputs as torch-fidelity's
implementation, and an ONNX extractor that `evaluate --features W.pth` uses."""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dcgan_deploy import evaluate as ev  # noqa: E402
from dcgan_deploy import inception  # noqa: E402
from dcgan_deploy.runtime import ModelError  # noqa: E402
from conftest import load_script  # noqa: E402

pytestmark = pytest.mark.slow  # an Inception network built, exported and run: the full suite's, not the fast lane's

DATA = Path(__file__).resolve().parent / "data"
REF = load_script("tests/inception_reference.py", "inception_reference")
KEYS = json.loads((DATA / "inception_keys.json").read_text())
EXPECTED = np.load(DATA / "inception_reference.npz")


def reference_inputs() -> np.ndarray:
    """The reference images as the extractor takes them: torch-fidelity maps uint8 u to (u - 128) / 128."""
    return (REF.seeded_images().astype(np.float32) - 128) / 128


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "pt_inception-test.pth"
    torch.save(REF.seeded_state(KEYS), path)
    return path


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("DCGAN_DEPLOY_CACHE", str(cache))
    try:
        yield ev.Extractor.load(inception.cached_extractor(weights)), cache
    finally:
        mp.undo()


def test_the_network_names_and_shapes_its_tensors_as_the_weights_file_does():
    net = inception.FIDInception()
    assert {k: list(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")} == KEYS


def test_features_and_logits_match_torch_fidelity_on_the_same_weights(weights):
    net = inception.load_weights(weights)
    with torch.no_grad():
        features, logits = net(torch.from_numpy(reference_inputs()))
    assert EXPECTED["features"].std() > 0.1  # the reference is not degenerate
    np.testing.assert_allclose(features.numpy(), EXPECTED["features"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits.numpy(), EXPECTED["logits"], atol=1e-4, rtol=1e-4)


def test_the_weights_file_becomes_a_cached_onnx_extractor(exported, weights, monkeypatch):
    extractor, cache = exported
    assert extractor.path.parent == cache and extractor.info["name"] == "inception-v3-fid"
    assert int(extractor.info["feature_dim"]) == 2048
    features, probs = extractor(reference_inputs())  # 299x299: the resize inside is the identity
    np.testing.assert_allclose(features, EXPECTED["features"], atol=1e-4, rtol=1e-4)
    logits = EXPECTED["logits"].astype(np.float64)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, softmax / softmax.sum(1, keepdims=True), atol=1e-6)
    # a second load reuses the export
    monkeypatch.setenv("DCGAN_DEPLOY_CACHE", str(cache))
    monkeypatch.setattr(inception, "export_extractor", lambda *a: pytest.fail("exported again"))
    assert ev.Extractor.load(weights).path == extractor.path


def test_grayscale_and_small_images_are_repeated_and_resized(exported):
    extractor, _ = exported
    gray = np.random.default_rng(0).uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32)
    features, probs = extractor(gray)
    rgb, _ = extractor(np.repeat(gray, 3, axis=1))
    assert features.shape == (3, 2048) and probs.shape == (3, 1008)
    np.testing.assert_array_equal(features, rgb)
    assert np.abs(features[0] - features[1]).max() > 1e-3  # different images, different features


def test_a_wrong_weights_file_is_refused_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("DCGAN_DEPLOY_CACHE", str(tmp_path / "cache"))
    other = REF.seeded_state(KEYS)
    del other["fc.weight"]
    other["head.weight"] = torch.zeros(3)
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="not the FID Inception weights.*missing 1 .*fc.weight.*unexpected 1"):
        inception.cached_extractor(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a weights file")
    with pytest.raises(ModelError, match="not a readable PyTorch weights file"):
        inception.cached_extractor(tmp_path / "junk.pth")
    with pytest.raises(ModelError, match="no such Inception weights file"):
        ev.Extractor.load(tmp_path / "absent.pth")
    # the runtime side alone says how to turn a weights file into an extractor
    with pytest.raises(ModelError, match="once, with torch: `dcgan-deploy evaluate --features FILE.pth`"):
        ev.Extractor.load(tmp_path / "junk.pth")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing half-written
