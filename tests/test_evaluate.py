import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from dcgan_deploy import evaluate as ev
from dcgan_deploy.cli import main
from dcgan_deploy.runtime import ModelError


def gaussian(n, d=16, seed=0, shift=0.0):
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    x = gaussian(2000)
    assert abs(ev.fid(x, x)) < 1e-6
    same = ev.fid(x, gaussian(2000, seed=1))
    small, large = ev.fid(x, gaussian(2000, seed=1, shift=0.2)), ev.fid(x, gaussian(2000, seed=1, shift=1.0))
    assert same < small < large
    assert abs(large - 16.0) < 1.5  # |mu difference|^2 = 16 * 1^2 for identical covariances
    # and with scale: a wider distribution is further away
    assert ev.fid(x, 2 * gaussian(2000, seed=1)) > 10 * same


def test_fid_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200_000, 2)) * [1.0, 2.0]
    b = rng.standard_normal((200_000, 2)) * [3.0, 1.0] + [1.0, 0.0]
    exact = 1.0 + (1 - 3) ** 2 + (2 - 1) ** 2  # |dmu|^2 + sum (sqrt(va) - sqrt(vb))^2
    assert abs(ev.fid(a, b) - exact) < 0.05


def test_kid_is_unbiased_on_two_samples_of_one_distribution():
    mean, std = ev.kid(gaussian(3000, seed=0), gaussian(3000, seed=1), subsets=20, subset_size=500)
    shifted, _ = ev.kid(gaussian(3000, seed=0), gaussian(3000, seed=1, shift=0.3), subsets=20, subset_size=500)
    assert abs(mean) < 3 * std / np.sqrt(20) + 1e-4
    assert shifted > 10 * abs(mean)


def test_classifier_score_and_coverage():
    confident = np.eye(10)[np.arange(1000) % 10]
    assert abs(ev.classifier_score(confident) - 10) < 1e-3
    one_class = np.eye(10)[np.zeros(1000, int)]
    assert abs(ev.classifier_score(one_class) - 1) < 1e-6
    cov = ev.coverage(one_class)
    assert cov["flagged"] and cov["missing_or_rare"] == list(range(1, 10)) and cov["min_share"] == 0
    assert not ev.coverage(confident)["flagged"]


def test_coverage_of_a_many_class_extractor_counts_classes_instead_of_flagging_each():
    probs = np.eye(1008)[np.r_[np.full(60, 612), np.arange(40)]]  # Inception's 1008 classes
    cov = ev.coverage(probs)
    assert not cov["flagged"] and cov["classes"] == 1008 and cov["distinct"] == 41
    assert cov["top"][0] == [612, 0.6] and "shares" not in cov
    report = {"model": "m.onnx", "architecture": "dcgan64", "seed": 0, "n_generated": 100,
              "extractor": {"path": "inception-v3-fid.onnx"}, "real": {"half_size": 100, "floor_sample_size": 100},
              "generated": {"fid": 1.0, "kid": 1e-4, "kid_std": 1e-5, "classifier_score": 2.0, "coverage": cov},
              "floor": {"fid": 0.5, "kid": 1e-6, "kid_std": 1e-5}, "real_classifier_score": 3.0,
              "ratios": {"fid_vs_floor": 2.0, "kid_vs_floor": 9.0, "score_vs_real": 0.67}}
    text = ev.format_quality(report)
    assert "41 of 1008 hit; largest shares 612:60.0%" in text and "WARNING" not in text
    assert "min_class_share" not in ev.quality_summary(report) and ev.quality_summary(report)["score"] == 2.0


@pytest.mark.slow
def test_the_shipped_extractor_sees_blur_and_class_collapse():
    extractor = ev.Extractor.load()
    assert float(extractor.info["test_accuracy"]) > 0.95
    a, b = ev.real_halves("mnist-sample", 1, 28)
    assert len(a) == len(b) == 2500
    base = ev.compare_sets(extractor, a[:1000], b)
    blurred = np.stack([np.asarray(Image.fromarray(im[..., 0]).filter(ImageFilter.GaussianBlur(1.5)))[..., None]
                        for im in a[:1000]])
    worse = ev.compare_sets(extractor, blurred, b)
    assert worse["fid"] > 3 * base["fid"] and worse["kid"] > base["kid"]
    assert worse["classifier_score"] < base["classifier_score"]
    labels_b = extractor(ev.to_float(b))[1].argmax(1)
    only_ones = b[labels_b == 1]
    collapsed = ev.compare_sets(extractor, only_ones, b)
    assert collapsed["coverage"]["flagged"] and collapsed["fid"] > 10 * base["fid"]


@pytest.mark.slow
def test_evaluate_the_bundled_model_reports_score_floor_and_sizes():
    report = ev.evaluate(n=500, seed=1)
    assert report["n_generated"] == 500 and report["real"]["half_size"] == 2500
    assert report["real"]["floor_sample_size"] == 500
    assert report["extractor"]["name"] == "mnist-classifier"
    g, f = report["generated"], report["floor"]
    assert g["fid"] > f["fid"] > 0 and 1 <= g["classifier_score"] <= 10
    assert report["ratios"]["fid_vs_floor"] == pytest.approx(g["fid"] / f["fid"])
    assert len(g["coverage"]["shares"]) == 10
    # reproducible from the same seed
    assert ev.evaluate(n=500, seed=1)["generated"]["fid"] == g["fid"]


@pytest.mark.slow
def test_evaluate_cli_json_and_save(tmp_path):
    import shutil

    from dcgan_deploy.bundled import bundled_models
    model = tmp_path / "m.onnx"
    shutil.copy(bundled_models()["mnist"], model)
    r = CliRunner().invoke(main, ["evaluate", str(model), "-n", "300", "--json", "--save"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["generated"]["n"] == 300
    info = CliRunner().invoke(main, ["info", str(model)])
    assert "quality    FID" in info.output and "n=300" in info.output
    facts = json.loads(CliRunner().invoke(main, ["info", str(model), "--json"]).output)
    assert facts["evaluation"]["fid"] == round(report["generated"]["fid"], 3)
    text = CliRunner().invoke(main, ["evaluate", str(model), "-n", "300"])
    assert "real floor" in text.output and "classifier score" in text.output


def test_an_extractor_that_cannot_take_the_models_images_names_what_to_pass():
    mnist = ev.Extractor.load()
    mnist.check_images(1, 28, 28)
    with pytest.raises(ModelError, match="takes 1x28x28 images.*makes 3x64x64.*--features.*Inception"):
        mnist.check_images(3, 64, 64)
    with pytest.raises(ModelError, match="takes 1x28x28"):
        mnist(np.zeros((2, 1, 32, 32), np.float32))


def test_missing_extractor_is_explained(tmp_path):
    with pytest.raises(ModelError, match="--features"):
        ev.Extractor.load(tmp_path / "none.onnx")
    with pytest.raises(ModelError, match="Inception"):
        ev.Extractor.load(tmp_path / "pt_inception-2015-12-05.pth")
    r = CliRunner().invoke(main, ["evaluate", "-n", "200", "--features", str(tmp_path / "none.onnx")])
    assert r.exit_code == 1 and "feature extractor" in r.output


@pytest.mark.slow
def test_drift_between_pytorch_and_onnx_is_at_the_noise_floor(tmp_path):
    import torch

    from dcgan_deploy.checkpoint import save_generator
    from dcgan_deploy.export import export
    from dcgan_deploy.nets import GeneratorNet as Generator, NetConfig
    torch.manual_seed(0)
    g = Generator(NetConfig.for_arch("mnist-mlp", g_width=16)).eval()
    save_generator(g.state_dict(), g.cfg, tmp_path / "g.safetensors")
    export(tmp_path / "g.safetensors", tmp_path / "g.onnx")
    from dcgan_deploy.parity import drift
    d = drift(tmp_path / "g.onnx", tmp_path / "g.safetensors", n=400)
    assert d["uint8_pixels_changed"] < 1e-3 and abs(d["fid"]) < 1e-2
