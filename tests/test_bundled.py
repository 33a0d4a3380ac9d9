"""The shipped default model: packaged in the wheel, usable from any folder, faithful to its record."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcgan_deploy import Generator
from dcgan_deploy.bundled import DEFAULT_MODEL, bundled_models
from dcgan_deploy.images import compare_images as compare
from dcgan_deploy.images import grid

from conftest import recorded_weights

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "training" / "mnist"


def test_default_model_is_bundled_and_small():
    models = bundled_models()
    assert DEFAULT_MODEL in models
    assert models[DEFAULT_MODEL].stat().st_size < 5 * 2**20
    gen = Generator.load()
    assert gen.path == models[DEFAULT_MODEL]
    assert gen.image_shape == (28, 28, 1) and gen.parity["passed"] is True
    assert gen.metadata["dataset"] == "mnist-sample" and int(gen.metadata["train_step"]) > 1000


def test_default_model_draws_digit_like_images():
    """MNIST-like statistics: dark background, 10-30% ink, varied samples (quality is measured by evaluate)."""
    x = Generator.load().generate(256, seed=0).astype(np.float32) / 255
    real = np.load(ROOT / "training" / "data" / "mnist_5k.npz")["images"][:256].astype(np.float32) / 255
    ink, real_ink = (x > 0.5).mean(), (real > 0.5).mean()
    assert 0.5 * real_ink < ink < 1.5 * real_ink
    assert x[:, :3, :].mean() < 0.05 and x[:, :, :3].mean() < 0.05  # empty borders, as in MNIST
    assert x.std(axis=0).mean() > 0.5 * real.std(axis=0).mean()      # no mode collapse to one image


def test_bundled_model_passes_verify_against_its_recorded_weights(tmp_path):
    from click.testing import CliRunner

    from dcgan_deploy.cli import main
    # the int8 file under its own (PSNR) gate; the RGB model against the weights its record names
    for name in (DEFAULT_MODEL, "mnist-int8", "emoji64", "mnist-cond"):
        r = CliRunner().invoke(main, ["verify", str(bundled_models()[name]), str(recorded_weights(name, tmp_path))])
        assert r.exit_code == 0, r.output
        assert "parity: PASSED" in r.output


def test_bundled_int8_variant_is_the_default_model_quantized():
    """`mnist-int8` ships because it is >= 1.5x faster on the CPU (BENCHMARKS.md); here: it is the same
    model (same weights record), it passed its PSNR gate, and its images stay close to fp32's."""
    fp32, int8 = Generator.load(device="cpu"), Generator.load("mnist-int8", device="cpu")
    assert int8.metadata["precision"] == "int8" and "precision" not in fp32.metadata
    for key in ("architecture", "train_step", "dataset", "net_config"):
        assert int8.metadata[key] == fp32.metadata[key]
    assert int8.parity["passed"] is True and int8.parity["worst"]["psnr"] >= 30
    z = fp32.latents(64, 3)
    err = compare(fp32.run(z), int8.run(z))
    assert 30 <= err["psnr"] < 80  # close to fp32, and really quantized
    assert "evaluation" in int8.metadata and "evaluation" in fp32.metadata


def test_bundled_rgb_model_is_the_recorded_emoji_run():
    """`emoji64`: the 64x64 RGB model of training/emoji64/, with its attribution, parity and evaluation on board."""
    gen = Generator.load("emoji64", device="cpu")
    assert gen.image_shape == (64, 64, 3) and gen.metadata["architecture"] == "dcgan64"
    assert "CC BY 4.0" in gen.metadata["attribution"] and "Twemoji" in gen.metadata["attribution"]
    assert gen.parity["passed"] is True and gen.evaluation["extractor"] == "emoji-classifier"
    # as evaluated in training/emoji64/RECORD.md: FID 2.61x its real-vs-real floor, within the 3x target
    assert gen.evaluation["ratios"]["fid_vs_floor"] <= 3.0
    assert gen.metadata["average"] == "16 generators, every 1000 steps from step 15000"  # the recipe's averaging
    assert gen.evaluation["memorisation"]["passed"] is True and gen.evaluation["shares"]["passed"] is True
    x = gen.generate(64, seed=0)
    assert x.astype(np.float32).std(axis=0).mean() > 30  # 64 different pictures, not one
    fake = grid(x).astype(np.float32)  # beside the record's 64 real images, in the same grid
    real = np.asarray(Image.open(ROOT / "training" / "emoji64" / "real-sample.png").convert("RGB"), np.float32)
    assert fake.shape == real.shape and abs(fake.mean() - real.mean()) < 0.1 * real.mean()  # white ground, emoji ink

    def colour(a):
        return (a.max(-1) - a.min(-1)).mean()
    assert 0.7 < colour(fake) / colour(real) < 1.3  # as colourful as the real emoji, not grey blobs


@pytest.mark.slow
def test_installed_wheel_generates_from_any_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(wheels.glob("dcgan_deploy-*.whl"))
    assert wheel.stat().st_size < 30 * 2**20  # every bundled model and extractor included
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    where = subprocess.run([sys.executable, "-c", "import dcgan_deploy.bundled as b; print(b.bundled_models()['mnist'])"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where  # the wheel's copy, not the source tree
    r = subprocess.run([sys.executable, "-m", "dcgan_deploy", "generate", "-n", "64", "--seed", "1", "-o", "grid.png"],
                       cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    image = np.asarray(Image.open(elsewhere / "grid.png"))
    assert image.shape == (8 * 30 + 2, 8 * 30 + 2)
    np.testing.assert_array_equal(image, grid(Generator.load().generate(64, seed=1))[..., 0])
