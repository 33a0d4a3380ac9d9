"""pytorch-GAN's generators imported as they are saved (``torch.save(generator.state_dict(), ...)``): the
``gan``/``cgan`` MLP as ``--arch pytorch-gan-mlp``, ``dcgan``/``acgan`` as ``--arch pytorch-gan-dcgan``, at
whatever ``--img_size`` they were trained; exported, gated and run with the images their own modules make."""
import collections
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from dcgan_deploy import Generator
from dcgan_deploy.checkpoint import CheckpointError, open_checkpoint
from dcgan_deploy.cli import main
from dcgan_deploy.directions import first_layer_map
from dcgan_deploy import modelfile


class MlpGenerator(nn.Module):
    """pytorch-GAN's gan.py (``classes=0``) and cgan.py generator: their attribute names and layer order;
    cgan joins the class embedding before the latent."""

    def __init__(self, latent=100, classes=0, size=28, channels=1):
        super().__init__()
        if classes:
            self.label_emb = nn.Embedding(classes, classes)
        layers = [nn.Linear(latent + classes, 128), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in ((128, 256), (256, 512), (512, 1024)):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b, 0.8), nn.LeakyReLU(0.2, inplace=True)]
        self.model = nn.Sequential(*layers, nn.Linear(1024, channels * size * size), nn.Tanh())
        self.shape, self.classes = (channels, size, size), classes

    def forward(self, z, labels=None):
        x = torch.cat((self.label_emb(labels), z), -1) if self.classes else z
        return self.model(x).view(len(z), *self.shape)


class ConvGenerator(nn.Module):
    """pytorch-GAN's dcgan.py (``classes=0``) and acgan.py generator: acgan multiplies the latent by a class
    embedding as wide as the latent. ``blocks`` is the name of the conv stack (``conv_model`` in some copies)."""

    def __init__(self, latent=100, classes=0, size=32, channels=1, blocks="conv_blocks"):
        super().__init__()
        if classes:
            self.label_emb = nn.Embedding(classes, latent)
        self.init_size, self.classes, self.blocks = size // 4, classes, blocks
        self.l1 = nn.Sequential(nn.Linear(latent, 128 * self.init_size ** 2))
        setattr(self, blocks, nn.Sequential(
            nn.BatchNorm2d(128), nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, stride=1, padding=1),
            nn.BatchNorm2d(128, 0.8), nn.LeakyReLU(0.2, inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, stride=1, padding=1), nn.BatchNorm2d(64, 0.8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, channels, 3, stride=1, padding=1), nn.Tanh()))

    def forward(self, z, labels=None):
        x = self.label_emb(labels) * z if self.classes else z
        out = self.l1(x).view(len(z), 128, self.init_size, self.init_size)
        return getattr(self, self.blocks)(out)


def trained_looking(net: nn.Module, seed: int) -> nn.Module:
    """``net`` with BatchNorm statistics and affine weights away from their initial values, in eval mode."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.3, 2.0)
            m.weight.data.normal_(1, 0.2)
            m.bias.data.normal_(0, 0.1)
    return net.eval()


LAYOUTS = {  # name: (module, architecture, image shape (H, W, C), classes)
    "gan": (lambda: MlpGenerator(), "pytorch-gan-mlp", (28, 28, 1), 0),
    "cgan": (lambda: MlpGenerator(classes=10, size=32), "pytorch-gan-mlp", (32, 32, 1), 10),
    "dcgan": (lambda: ConvGenerator(size=32, channels=3, blocks="conv_model"), "pytorch-gan-dcgan", (32, 32, 3), 0),
    "acgan": (lambda: ConvGenerator(classes=10, size=28), "pytorch-gan-dcgan", (28, 28, 1), 10),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each layout's state dict saved as pytorch-GAN users save it, exported (fp32 and int8) through the CLI."""
    tmp = tmp_path_factory.mktemp("pytorch_gan")
    out = {}
    for i, (name, (make, arch, _, _)) in enumerate(LAYOUTS.items()):
        torch.manual_seed(i)
        net = trained_looking(make(), i)
        torch.save(net.state_dict(), tmp / f"{name}.pth")
        r = CliRunner().invoke(main, ["export", str(tmp / f"{name}.pth"), "--arch", arch,
                                      "-o", str(tmp / f"{name}.onnx"), "--int8", "--json"])
        out[name] = (net, tmp / f"{name}.onnx", r)
    return tmp, out


@pytest.mark.slow
@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_exports_gated_and_draws_what_its_own_module_draws(exported, name):
    _, arch, shape, classes = LAYOUTS[name]
    net, path, r = exported[1][name]
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["parity"]["passed"] and result["int8"]["parity"]["passed"]
    assert result["int8"]["parity"]["integer_sums"]["portable"]  # the same int8 bytes on every CPU, by the file
    gen = Generator.load(path, device="cpu")
    assert gen.image_shape == shape and gen.metadata["architecture"] == arch
    assert gen.classes == (tuple(str(k) for k in range(classes)) if classes else ())
    z = gen.latents(6, seed=3)
    labels = np.array([0, 3, 9, 9, 1, 7]) if classes else None
    with torch.no_grad():
        want = (net(torch.from_numpy(z), torch.from_numpy(labels)) if classes else net(torch.from_numpy(z))).numpy()
    got = gen.run(z, labels) if classes else gen.run(z)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(want).max() > 0.05  # not a blank image that anything would match
    if classes:  # the label matters, and generate by label is the module's image for that label
        assert np.abs(gen.run(z, labels[::-1].copy()) - got).max() > 1e-3  # float noise is ~1e-7
        with torch.no_grad():
            seven = net(torch.from_numpy(z), torch.full((6,), 7)).numpy()
        np.testing.assert_allclose(gen.run(z, np.full(6, 7)), seven, atol=1e-4)
    # BatchNorm is folded everywhere, acgan's first one (after the reshape) included
    assert "BatchNormalization" not in collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert len(gen.directions) >= 10


@pytest.mark.slow
def test_acgan_sefa_reads_the_latent_through_each_class_embedding(exported):
    """acgan multiplies z by the class embedding e_y before its first layer W: the first layer's map of z is
    W diag(e_y) per class, and SeFa's map is those stacked (so A^T A is their class average)."""
    net, path, _ = exported[1]["acgan"]
    a = first_layer_map(modelfile.read(path), 100)
    w, e = net.l1[0].weight.detach().double().numpy(), net.label_emb.weight.detach().double().numpy()
    folded = w * (np.repeat(net.conv_blocks[0].weight.detach().double().numpy()
                            / np.sqrt(net.conv_blocks[0].running_var.double().numpy() + 1e-5), 49))[:, None]
    want = np.concatenate([folded * row for row in e]) / np.sqrt(10)
    np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_an_acgan_walks_from_one_class_to_another(exported):
    gen = Generator.load(exported[1]["acgan"][1], device="cpu")
    walk = gen.class_walk(5, 2, 8, frames=4)
    assert np.array_equal(walk[0], gen.generate(1, seed=5, label=2)[0])
    assert np.array_equal(walk[-1], gen.generate(1, seed=5, label=8)[0])
    assert len({w.tobytes() for w in walk}) == 5


def test_a_layout_that_does_not_fit_is_named(tmp_path):
    torch.save(MlpGenerator(classes=10).state_dict(), tmp_path / "cgan.pth")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "cgan.pth"), "--arch", "pytorch-gan-dcgan",
                                  "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 1 and "does not match pytorch-gan-dcgan" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.onnx").exists()
    odd = MlpGenerator().state_dict()
    odd["model.11.weight"], odd["model.11.bias"] = torch.zeros(700, 1024), torch.zeros(700)  # 700: no square image
    torch.save(odd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="multiple of 4"):
        open_checkpoint(tmp_path / "odd.pth", "pytorch-gan-mlp")
    cut = ConvGenerator(classes=10).state_dict()
    del cut["conv_blocks.6.weight"]
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"key main\.8\.weight .* is missing"):
        open_checkpoint(tmp_path / "cut.pth", "pytorch-gan-dcgan")


def test_the_architectures_take_pytorch_gan_image_sizes():
    from dcgan_deploy.nets import GeneratorNet, NetConfig
    for arch in ("pytorch-gan-mlp", "pytorch-gan-dcgan"):
        for size in (16, 28, 32, 64):
            cfg = NetConfig.for_arch(arch, image_size=size, g_width=8, num_classes=3)
            with torch.no_grad():
                image = GeneratorNet(cfg).eval()(torch.zeros(2, 100), torch.tensor([0, 2]))
            assert tuple(image.shape) == (2, 1, size, size)
        for bad in (30, 28.0, True, "32", 132):
            with pytest.raises(ValueError, match="multiple of 4"):
                NetConfig.for_arch(arch, image_size=bad)
    with pytest.raises(ValueError, match="makes 28x28 images"):
        NetConfig.for_arch("mnist-dcgan", image_size=32)


@pytest.mark.slow
def test_the_javascript_runtime_draws_a_32_pixel_conditional_import(exported):
    """dcgan.mjs in Node on the 32x32 cgan import: the image size from the file, the labels, Python's images."""
    import base64

    from conftest import run_ort_web
    out = run_ort_web("pytorch_gan", """
import * as ort from "onnxruntime-web";
import { loadGenerator } from "./dcgan_deploy/js/dcgan.mjs";
ort.env.wasm.numThreads = 1;
const gen = await loadGenerator(process.argv[2], { ort });
const out = await gen.generate(4, 11n, { label: "6" });
const u8 = Buffer.from(out.uint8).toString("base64");
process.stdout.write(JSON.stringify({ width: out.width, height: out.height, u8 }));
""", exported[1]["cgan"][1])
    py = Generator.load(exported[1]["cgan"][1], device="cpu").generate(4, seed=11, label="6")
    assert (out["width"], out["height"]) == (32, 32)
    js = np.frombuffer(base64.b64decode(out["u8"]), np.uint8).reshape(py.shape)
    assert np.mean(js != py) <= 1e-3  # float32 across backends: the contract's bound


@pytest.mark.slow
def test_the_layouts_train_here_too_conditionally_at_their_own_size(tmp_path):
    """The trainer takes the pytorch-GAN layouts (acgan's multiplied class embedding, a 32x32 image, the auxiliary
    classifier) and its generator exports with the label input."""
    from dcgan_deploy.export import export
    from dcgan_deploy.train import TrainConfig, Trainer
    cfg = TrainConfig.from_dict({"arch": "pytorch-gan-dcgan", "data": "synthetic:64:3", "conditional": "on", "steps": 2,
                                 "batch_size": 8, "checkpoint_every": 2, "sample_every": 2,
                                 "discriminator": {"classifier": 1.0},
                                 "net": {"g_width": 8, "d_width": 4, "image_size": 32}})
    Trainer(cfg, tmp_path / "run", progress=False).train()
    assert export(tmp_path / "run" / "train_state.pt", tmp_path / "g.onnx")["parity"]["passed"]
    gen = Generator.load(tmp_path / "g.onnx", device="cpu")
    assert gen.image_shape == (32, 32, 1) and len(gen.classes) == 3
    assert gen.generate(2, seed=1, label=1).shape == (2, 32, 32, 1)


def test_export_names_the_classes_of_a_bare_conditional_state_dict(tmp_path):
    torch.save(trained_looking(MlpGenerator(latent=8, classes=3, size=16), 0).state_dict(), tmp_path / "cgan.pth")
    torch.save(trained_looking(MlpGenerator(latent=8, size=16), 0).state_dict(), tmp_path / "gan.pth")
    run = lambda *args: CliRunner().invoke(main, ["export", "--arch", "pytorch-gan-mlp", *map(str, args)])  # noqa: E731
    r = run(tmp_path / "cgan.pth", "--classes", "cat, dog,fox", "-o", tmp_path / "c.onnx")
    assert r.exit_code == 0, r.output
    gen = Generator.load(tmp_path / "c.onnx", device="cpu")
    assert gen.classes == ("cat", "dog", "fox") and gen.image_shape == (16, 16, 1)
    assert np.array_equal(gen.generate(2, seed=0, label="dog"), gen.generate(2, seed=0, label=1))
    for ckpt, classes, words in (("cgan", "cat,dog", "has 3 classes; give 3 different names, got 'cat', 'dog'"),
                                 ("cgan", "cat,cat,dog", "give 3 different names"),
                                 ("gan", "cat,dog,fox", "is not class-conditional")):
        r = run(tmp_path / f"{ckpt}.pth", "--classes", classes, "-o", tmp_path / "x.onnx")
        assert r.exit_code == 1 and words in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_evaluate_measures_a_32_pixel_digit_model_with_the_digit_classifier(exported):
    """pytorch-GAN trains MNIST at 32x32 by default: evaluate reads the real digits at 32x32 (as such a model
    was trained) and measures real and generated images resized to the classifier's 28x28 alike."""
    from dcgan_deploy.evaluate import evaluate
    report = evaluate(exported[1]["cgan"][1], n=500, seed=1)
    assert report["extractor"]["name"] == "mnist-classifier" and report["extractor"]["resized_to"] == "28x28"
    assert report["real_classifier_score"] > 9  # real digits, through 28 -> 32 -> 28, are still read as digits
    assert 0 < report["floor"]["fid"] < 10 and report["ratios"]["fid_vs_floor"] > 10  # an untrained generator
    assert set(report["per_class"]) == {str(k) for k in range(10)}
    assert all("accuracy" in row and "fid_vs_floor" in row for row in report["per_class"].values())


def test_a_wrapped_or_whole_saved_generator(tmp_path):
    """A state dict saved from a DataParallel / DDP or torch.compile wrapper loads under the net's own keys; a
    generator saved whole is refused unloaded, naming its class and what to save instead."""
    net = trained_looking(ConvGenerator(latent=16, classes=3, size=16), 0)
    torch.save({f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}, tmp_path / "wrapped.pth")
    c = open_checkpoint(tmp_path / "wrapped.pth", "pytorch-gan-dcgan")
    z, labels = torch.randn(3, 16), torch.tensor([0, 2, 1])
    with torch.no_grad():
        torch.testing.assert_close(c.model(z, labels), net(z, labels), atol=1e-6, rtol=0)
    torch.save(net, tmp_path / "whole.pth")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "whole.pth"), "--arch", "pytorch-gan-dcgan",
                                  "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "test_pytorch_gan.ConvGenerator" in r.output and "torch.save(generator.state_dict())" in r.output
    assert not (tmp_path / "x.onnx").exists()
