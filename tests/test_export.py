import collections
import json
import os

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F

from dcgan_deploy import Generator
from dcgan_deploy import UnverifiedModelWarning
from dcgan_deploy.checkpoint import CheckpointError, save_generator
from dcgan_deploy.cli import EXIT_PARITY, main
from dcgan_deploy.checkpoint import open_checkpoint
from dcgan_deploy.export import deploy_form, export, fold_batchnorm, int8_form, to_onnx, verify
from dcgan_deploy.modelfile import write_metadata
from dcgan_deploy.export import base_metadata
from dcgan_deploy.forms import (FirstLayerGemm, PhaseConvT, PhaseConvTTail, PhaseTail, PhaseUp, interleave,
                                phase_tail, phase_upsamples, transposed_forms)
from dcgan_deploy.images import to_uint8
from dcgan_deploy.nets import ARCHITECTURES, GeneratorNet, NetConfig, sample_prior
from dcgan_deploy.images import compare_images as compare
from dcgan_deploy.gate import GateError, Thresholds
from dcgan_deploy.parity import run_gate
from dcgan_deploy.nets import recompute_bn_stats

TINY = {"g_width": 8, "d_width": 8}
CONTRACT_KEYS = {"dcgan_deploy.format", "architecture", "latent_dim", "latent_prior", "channels", "height", "width",
                 "value_range", "dataset", "train_step", "torch_version", "opset", "parity"}
def random_generator(arch, seed=0, **net):
    """A stand-in for a trained generator: random weights, realistic BatchNorm statistics,
    and images spread over [-1, 1] (pre-tanh std ~1) rather than a flat grey."""
    torch.manual_seed(seed)
    g = GeneratorNet(NetConfig.for_arch(arch, **{**TINY, **net}))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
        recompute_bn_stats(g, batches=4, batch_size=64, seed=seed)
        last = [m for m in g.main if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))][-1]
        pre_tanh = []
        hook = last.register_forward_hook(lambda mod, inp, out: pre_tanh.append(out.std()))
        g.eval()(sample_prior(64, g.cfg))
        hook.remove()
        last.weight /= pre_tanh[0]
        if last.bias is not None:
            last.bias /= pre_tanh[0]
    return g.eval()


def saved(tmp_path, g, name="generator.safetensors"):
    path = tmp_path / name
    save_generator(g.state_dict(), g.cfg, path, {"train_step": "7", "dataset": "synthetic"})
    return path


def ops(path):
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_export_verify_round_trip(tmp_path, arch):
    g = random_generator(arch)
    result = export(saved(tmp_path, g), tmp_path / "out" / f"{arch}.onnx")
    path = tmp_path / "out" / f"{arch}.onnx"
    assert result["model"] == str(path) and path.exists()
    report = result["parity"]
    assert report["passed"] and report["worst"]["max_abs"] <= 1e-4
    assert {c["batch"] for c in report["checks"]} == {1, 7, 64} and len({c["seed"] for c in report["checks"]}) >= 3
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert CONTRACT_KEYS <= set(meta)
    assert meta["architecture"] == arch and meta["train_step"] == "7" and meta["dataset"] == "synthetic"
    assert json.loads(meta["parity"])["passed"] is True
    assert not set(ops(path)) & {"Dropout", "RandomNormal", "RandomUniform"}
    assert json.loads((tmp_path / "out" / f"{arch}.parity.json").read_text())["parity"]["passed"]
    # the runtime reproduces PyTorch on the contract's latents
    rt = Generator.load(path)
    z = rt.latents(9, seed=4)
    with torch.no_grad():
        want = g(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(rt.run(z), want, atol=1e-4)
    assert np.mean(to_uint8(want) != rt.generate(9, seed=4)) < 1e-3
    # the written form computes what the plain graph (export --no-forms) computes
    to_onnx(fold_batchnorm(g), g.cfg, tmp_path / "plain.onnx")
    write_metadata(tmp_path / "plain.onnx", {k: v for k, v in meta.items() if k != "parity"})
    plain = Generator.load(tmp_path / "plain.onnx")
    np.testing.assert_allclose(rt.run(z), plain.run(z), atol=1e-5)


@pytest.mark.slow
def test_no_forms_writes_the_plain_graph(tmp_path):
    g = random_generator("dcgan64")
    plain = export(saved(tmp_path, g), tmp_path / "plain.onnx", forms=False)
    formed = export(saved(tmp_path, g), tmp_path / "formed.onnx")
    assert plain["parity"]["passed"] and plain["forms"] is False and formed["forms"] is True
    assert ops(tmp_path / "plain.onnx")["ConvTranspose"] > 0 and ops(tmp_path / "formed.onnx")["ConvTranspose"] == 0
    z = Generator.load(tmp_path / "plain.onnx").latents(5, 1)
    np.testing.assert_allclose(Generator.load(tmp_path / "plain.onnx").run(z), Generator.load(tmp_path / "formed.onnx").run(z),
                               atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_phase_tail_form_equals_the_generator(arch):
    g = random_generator(arch, seed=3, g_width=16)
    folded = fold_batchnorm(g)
    form = phase_tail(folded)
    if arch not in ("mnist-dcgan", "mnist-dcgan-wide", "pytorch-gan-dcgan"):
        assert form is None  # no upsample-conv-(leaky)relu-conv-tanh tail: the export keeps the folded model
        return
    assert isinstance(form.main[-1], PhaseTail) and not any(isinstance(m, PhaseTail) for m in folded.main)
    assert not {id(p) for p in form.parameters()} & {id(p) for p in folded.parameters()}  # a copy
    z = sample_prior(16, g.cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = g(z), form(z)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # a wrong parity map would move pixels by a whole row or column: far outside the tolerance
    assert (want - torch.roll(want, 1, dims=-1)).abs().max() > 1e-2


def test_the_trainers_train_state_exports(tmp_path):
    from dcgan_deploy.train import TrainConfig, Trainer
    cfg = TrainConfig.of(arch="mnist-mlp", data="synthetic:32", steps=2, batch_size=8, ema=0.5, net=TINY)
    Trainer(cfg, tmp_path / "run", progress=False).train()
    result = export(tmp_path / "run" / "train_state.pt", tmp_path / "m.onnx")
    assert result["parity"]["passed"] and "EMA" in result["notes"][0]
    # train_state.pt (EMA, BN re-estimated) and generator.safetensors describe the same generator
    a = open_checkpoint(tmp_path / "run" / "train_state.pt").model.state_dict()
    b = open_checkpoint(tmp_path / "run" / "generator.safetensors").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_default_destination_is_exports_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "digits"
    run.mkdir(parents=True)
    saved(run, random_generator("mnist-dcgan"))
    result = export(run / "generator.safetensors")
    assert result["model"] == os.path.join("exports", "digits.onnx")
    assert (tmp_path / "exports" / "digits.onnx").exists() and (tmp_path / "exports" / "digits.parity.json").exists()


class CanonicalNetG(nn.Module):
    """The generator of pytorch/examples dcgan/main.py, written out independently."""

    def __init__(self, nz, ngf, nc):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, x):
        return self.main(x)


@pytest.mark.slow
def test_canonical_example_state_dict(tmp_path):
    torch.manual_seed(1)
    net = CanonicalNetG(nz=50, ngf=8, nc=3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    net.eval()
    ckpt = tmp_path / "netG_epoch_24.pth"
    torch.save(net.state_dict(), ckpt)
    r = CliRunner().invoke(main, ["export", str(ckpt), "--arch", "dcgan64", "-o", str(tmp_path / "g.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["parity"]["passed"]
    rt = Generator.load(tmp_path / "g.onnx")
    assert (rt.latent_dim, rt.image_shape) == (50, (64, 64, 3))
    z = rt.latents(3, 0)
    with torch.no_grad():
        want = net(torch.from_numpy(z)[:, :, None, None]).numpy()
    np.testing.assert_allclose(rt.run(z), want, atol=1e-4)

    r = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(tmp_path / "h.onnx")])
    assert r.exit_code == 1 and "--arch" in r.output
    r = CliRunner().invoke(main, ["export", str(ckpt), "--arch", "mnist-dcgan", "-o", str(tmp_path / "h.onnx")])
    assert r.exit_code == 1 and "does not match mnist-dcgan: key main.0.weight" in r.output
    bad = net.state_dict()
    bad["main.4.weight"] = torch.ones(5)
    torch.save(bad, tmp_path / "bad.pth")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "bad.pth"), "--arch", "dcgan64", "-o", str(tmp_path / "h.onnx")])
    assert r.exit_code == 1 and "key main.4.weight has shape [5] in the checkpoint, [32]" in r.output
    assert not (tmp_path / "h.onnx").exists()


@pytest.mark.slow
def test_int8_end_is_capped_split_shared_and_float(tmp_path, monkeypatch):
    """On the bundled weights: MinMax gives the pre-tanh values a range tens of units wide, and the export caps it
    at +-TANH_RANGE; the last convolution's weights are split into levels (their 7-bit rounding and the rest, four
    levels for one image channel: 16 output channels); each
    quantized Concat copies bytes (its inputs share its scale and zero point); what follows the last product
    stays in float. The cap and the split each raise the int8 file's PSNR by more than 2 dB (integers
    throughout, still portable)."""
    from conftest import recorded_weights

    from dcgan_deploy import export as export_mod
    from dcgan_deploy import forms
    weights = recorded_weights("mnist", tmp_path)

    def int8_file(name):
        result = export(weights, tmp_path / f"{name}.onnx", int8=True, thresholds=Thresholds(int8_min_psnr=0))
        assert result["int8"]["parity"]["integer_sums"]["portable"]
        path = tmp_path / f"{name}-int8.onnx"
        model = onnx.load(str(path))
        init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        consumers = collections.defaultdict(list)
        for n in model.graph.node:
            for i in n.input:
                consumers[i].append(n)
        last = [n for n in model.graph.node if n.op_type == "Conv"][-1]
        (q,) = consumers[last.output[0]]
        assert q.op_type == "QuantizeLinear"
        # one DequantizeLinear per level's Slice; unsplit, tanh looks the bytes up (Cast to an index, Shape)
        direct = consumers[q.output[0]]
        assert direct and {n.op_type for n in direct} <= {"DequantizeLinear", "Cast", "Shape"}
        after, todo = set(), [o for n in direct for o in n.output]
        while todo:  # everything downstream of the last product's quantized output, past its direct readers
            for n in consumers[todo.pop()]:
                after.add(n.op_type)
                todo += list(n.output)
        assert "GatherElements" in after and not after & {"Tanh", "QuantizeLinear", "DequantizeLinear", "Conv"}
        for cat in (n for n in model.graph.node if n.op_type == "Concat" and consumers[n.output[0]][0].op_type
                    == "QuantizeLinear"):
            out_q = consumers[cat.output[0]][0]
            for tensor in cat.input:  # DequantizeLinear(QuantizeLinear(x)) with the Concat's own scale and zero point
                dq_in = next(n for n in model.graph.node if tensor in n.output)
                assert [init[t].tolist() for t in dq_in.input[1:]] == [init[t].tolist() for t in out_q.input[1:]]
        scale, zero = float(init[q.input[1]]), int(init[q.input[2]])
        gen = Generator.load(tmp_path / f"{name}.onnx")
        z = gen.latents(256, 0)
        psnr = compare(gen.run(z), Generator.load(path).run(z))["psnr"]
        return ((0 - zero) * scale, (255 - zero) * scale), init[last.input[1].replace("_DequantizeLinear_Output",
                                                                                      "_quantized")].shape, psnr

    (low, high), shape, best = int8_file("capped")
    step = 2 * export_mod.TANH_RANGE / 255  # the quantizer moves an end by up to a step to hold zero exactly
    assert -export_mod.TANH_RANGE - step <= low < -2 and 2 < high <= export_mod.TANH_RANGE + step
    assert shape[0] == 16  # 4 output phases x 4 levels: the weights rounded, their rest, its rest, and its rest
    with monkeypatch.context() as m:
        m.setattr(forms.PhaseTail, "split", lambda self, *args: None)
        _, shape, unsplit = int8_file("unsplit")
    assert shape[0] == 4 and best > unsplit + 2
    monkeypatch.setattr(export_mod, "TANH_RANGE", 1e9)
    (low, high), _, minmax = int8_file("minmax")
    assert high - low > 20  # what MinMax alone gives this model
    assert best > minmax + 2, (best, unsplit, minmax)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pth"
    torch.save({"main.0.weight": torch.zeros(1), "payload": Exploit(marker)}, ckpt)
    r = CliRunner().invoke(main, ["export", str(ckpt), "--arch", "dcgan64", "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 1 and "refused to load" in r.output and "Traceback" not in r.output
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        open_checkpoint(ckpt, "dcgan64")
    assert not marker.exists()


@pytest.mark.slow
def test_a_parity_miss_fails_and_leaves_no_model(tmp_path):
    ckpt = saved(tmp_path, random_generator("mnist-dcgan"))
    out = tmp_path / "dest" / "m.onnx"
    r = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(out), "--max-abs-cpu", "0", "--json"])
    assert r.exit_code == EXIT_PARITY
    report = json.loads(r.output[r.output.index("{"):r.output.rindex("}") + 1])
    assert report["passed"] is False and report["worst"]["max_abs"] > 0
    assert any("max abs error" in f and "> 0" in f for f in report["failures"])
    assert not out.exists() and not list(out.parent.glob("*.part"))
    saved_report = json.loads((out.parent / "m.parity.json").read_text())  # the numbers that missed, kept
    assert saved_report["parity"]["passed"] is False and saved_report["parity"]["failures"] == report["failures"]
    text = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(out), "--max-abs-cpu", "0"])
    assert text.exit_code == EXIT_PARITY and "MISS" in text.output and "parity: FAILED" in text.output


@pytest.mark.slow
def test_perturbed_weights_fail_verify(tmp_path):
    ckpt = saved(tmp_path, random_generator("dcgan64"))
    path = tmp_path / "g.onnx"
    export(ckpt, path)
    r = CliRunner().invoke(main, ["verify", str(path), str(ckpt)])
    assert r.exit_code == 0 and "parity: PASSED" in r.output
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data) or len(t.float_data))
    w = onnx.numpy_helper.to_array(init).copy()
    w *= 1.05  # a 5% drift of one layer
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    r = CliRunner().invoke(main, ["verify", str(path), str(ckpt), "--json"])
    assert r.exit_code == EXIT_PARITY
    report = json.loads(r.output)
    assert not report["passed"] and report["worst"]["max_abs"] > 1e-3


class BatchStatisticsNorm(nn.Module):
    """What a train-mode BatchNorm computes: normalisation with the batch's own statistics."""

    def __init__(self, bn):
        super().__init__()
        self.bn = bn

    def forward(self, x):
        return nn.functional.batch_norm(x, None, None, self.bn.weight, self.bn.bias, training=True, eps=self.bn.eps)


@pytest.mark.slow
def test_train_mode_batchnorm_fails_batch_invariance(tmp_path):
    g = random_generator("mnist-dcgan")
    broken = fold_batchnorm(g)  # a fresh copy
    broken.main = nn.Sequential(*[BatchStatisticsNorm(m) if isinstance(m, nn.BatchNorm2d) else m for m in g.main])
    path = tmp_path / "trainmode.onnx"
    to_onnx(broken, g.cfg, path)
    write_metadata(path, base_metadata(open_checkpoint(saved(tmp_path, g)), 18))
    report = run_gate(broken, path)  # even against its own torch twin, batch statistics break invariance
    assert not report["passed"]
    assert any("batch invariance" in f for f in report["failures"])
    assert not report["batch_invariance"][0]["passed"]


@pytest.mark.slow
def test_triton_repository_entry_parses_against_tritons_schema(tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    ckpt = saved(tmp_path, random_generator("mnist-convt"))
    r = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(tmp_path / "digits.onnx"),
                                  "--triton", str(tmp_path / "repo")])
    assert r.exit_code == 0, r.output
    entry = tmp_path / "repo" / "digits"
    cfg = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == "digits" and cfg.backend == "onnxruntime" and cfg.max_batch_size >= 64
    assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [("z", [96], model_config_pb2.TYPE_FP32)]
    assert [(o.name, list(o.dims), o.data_type) for o in cfg.output] == [("image", [28, 28, 1],
                                                                          model_config_pb2.TYPE_UINT8)]
    assert cfg.HasField("dynamic_batching") and list(cfg.dynamic_batching.preferred_batch_size)
    # the entry's graph answers with the bytes `generate` writes, as `dcgan-deploy serve` does
    import onnxruntime as ort
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    gen = Generator.load(tmp_path / "digits.onnx")
    z = gen.latents(9, 5)
    assert np.array_equal(session.run(["image"], {"z": z})[0], gen.generate(9, 5))
    from dcgan_deploy.serve import ModelInfo
    served = ModelInfo("digits", tmp_path / "digits.onnx").metadata()
    assert served["inputs"][0] == {"name": "z", "datatype": "FP32", "shape": [-1, 96]}
    assert served["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, *cfg.output[0].dims]}]


@pytest.mark.slow
def test_fp16_variant_is_marked_unverified_without_cuda(tmp_path):
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA present: the fp16 model is verified there")
    ckpt = saved(tmp_path, random_generator("mnist-dcgan"))
    result = export(ckpt, tmp_path / "m.onnx", fp16=True)
    fp16 = tmp_path / "m-fp16.onnx"
    assert result["fp16"]["model"] == str(fp16) and fp16.exists()
    model = onnx.load(str(fp16))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    p = result["fp16"]["parity"]
    assert p["verified"] is False and "no CUDA" in p["reason"]
    if p["passed"]:  # it ran on CPU: its own image-space gate
        assert p["worst"]["psnr"] >= 40
    with pytest.warns(UnverifiedModelWarning):
        Generator.load(fp16)
    r = CliRunner().invoke(main, ["generate", "-m", str(fp16), "-n", "4", "-o", str(tmp_path / "g.png")])
    assert r.exit_code == 0 and "warning:" in r.output and "unverified" in r.output


@pytest.mark.slow
def test_int8_variant_is_quantized_gated_and_runs(tmp_path):
    ckpt = saved(tmp_path, random_generator("mnist-dcgan"))
    r = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--int8"])
    assert r.exit_code == 0, r.output
    int8 = tmp_path / "m-int8.onnx"
    assert f"wrote {int8} (int8: PSNR >= " in r.output
    counts = ops(int8)
    assert counts["QuantizeLinear"] >= 3 and counts["DequantizeLinear"] >= counts["Conv"] + counts["Gemm"]
    assert {i.data_type for i in onnx.load(str(int8)).graph.initializer} >= {onnx.TensorProto.INT8}
    gen = Generator.load(int8, device="cpu")
    assert gen.metadata["precision"] == "int8" and gen.parity["passed"] and gen.parity["worst"]["psnr"] >= 30
    # the gate's numbers are real: recomputed here against the fp32 model they differ, but not by much
    z = gen.latents(16, 5)
    err = compare(Generator.load(tmp_path / "m.onnx", device="cpu").run(z), gen.run(z))
    assert 0 < err["max_abs"] and err["psnr"] >= 30
    report = json.loads((tmp_path / "m-int8.parity.json").read_text())
    assert report["result"]["precision"] == "int8" and report["parity"]["providers"] == ["CPUExecutionProvider"]
    # verify re-runs the gate it was exported under (PSNR, not the fp32 max-abs limit)
    r = CliRunner().invoke(main, ["verify", str(int8), str(ckpt)])
    assert r.exit_code == 0 and "parity: PASSED" in r.output, r.output
    assert verify(int8, ckpt, thresholds=Thresholds(int8_min_psnr=99))["passed"] is False
    # a gate it cannot meet: the fp32 model is written, the int8 file is not
    with pytest.raises(GateError, match="int8 parity gate failed"):
        export(ckpt, tmp_path / "strict.onnx", int8=True, thresholds=Thresholds(int8_min_psnr=99))
    assert (tmp_path / "strict.onnx").exists() and not (tmp_path / "strict-int8.onnx").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_checkpoint_with_broken_batchnorm_statistics_is_refused(tmp_path):
    g = random_generator("mnist-dcgan")
    g.main[4].running_var[0] = float("nan")
    with pytest.raises(CheckpointError, match="running statistics"):
        open_checkpoint(saved(tmp_path, g))


@pytest.mark.slow
def test_export_and_verify_errors(tmp_path):
    r = CliRunner().invoke(main, ["export", str(tmp_path / "none.pt")])
    assert r.exit_code == 1 and "no such checkpoint" in r.output
    (tmp_path / "junk.pt").write_bytes(b"junk")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "junk.pt"), "--arch", "dcgan64"])
    assert r.exit_code == 1 and "junk.pt" in r.output and "Traceback" not in r.output
    ckpt = saved(tmp_path, random_generator("mnist-dcgan"))
    r = CliRunner().invoke(main, ["export", str(ckpt), "--arch", "dcgan64"])
    assert r.exit_code == 1 and "holds a mnist-dcgan generator" in r.output
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "missing.onnx"), str(ckpt)])
    assert r.exit_code == 1 and "no such model file" in r.output
    with pytest.raises(GateError):
        export(ckpt, tmp_path / "m.onnx", thresholds=Thresholds(cpu_max_abs=0.0))


def test_phase_tail_with_several_output_channels():
    # RGB-style tail: each of the 3 output channels gets its own 16 tap maps and shift group
    torch.manual_seed(0)
    up, conv_a, act, conv_b, out_act = (torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(5, 6, 3, padding=1),
                                        torch.nn.ReLU(), torch.nn.Conv2d(6, 3, 3, padding=1), torch.nn.Tanh())
    plain = torch.nn.Sequential(up, conv_a, act, conv_b, out_act).eval()
    form = PhaseTail(conv_a, act, conv_b, out_act).eval()
    x = torch.randn(4, 5, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(form(x), plain(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("relu", [False, True])
def test_phase_convt_equals_the_transposed_convolution(relu):
    torch.manual_seed(0)
    convt = torch.nn.ConvTranspose2d(6, 5, 4, 2, 1)
    plain = torch.nn.Sequential(convt, torch.nn.ReLU()) if relu else convt
    form = PhaseConvT(convt, torch.nn.ReLU() if relu else None)
    x = torch.randn(3, 6, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(form(x), plain(x), atol=1e-5, rtol=0)


def test_interleave_is_exactly_the_pixel_shuffle_of_the_stacked_phases():
    torch.manual_seed(0)
    phases = [torch.randn(3, 5, 4, 7) * 10 ** float(e) for e in range(-3, 1)]  # mixed magnitudes, signs
    shuffled = F.pixel_shuffle(torch.stack(phases, 2).reshape(3, 20, 4, 7), 2)
    assert torch.equal(interleave(phases), shuffled)  # bit for bit: placement by 0/1 products adds exact zeros


@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.LeakyReLU(0.2)])
def test_phase_up_equals_upsample_conv_act(act):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 6, 3, padding=1)
    plain = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), conv, act).eval()
    x = torch.randn(3, 5, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(PhaseUp(conv, act)(x), plain(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["mnist-dcgan", "mnist-dcgan-wide", "pytorch-gan-dcgan"])
def test_deploy_forms_never_make_an_upsampled_copy(arch, tmp_path):
    g = random_generator(arch, seed=2, g_width=16)
    z = sample_prior(8, g.cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = g(z)
        for form in (deploy_form(g), int8_form(g)):
            assert not any(isinstance(m, torch.nn.Upsample) for m in form.modules())
            assert any(isinstance(m, PhaseUp) for m in form.modules())
            torch.testing.assert_close(form(z), want, atol=1e-5, rtol=0)
    to_onnx(deploy_form(g), g.cfg, tmp_path / "m.onnx")
    assert ops(tmp_path / "m.onnx")["Resize"] == 0 and ops(tmp_path / "m.onnx")["DepthToSpace"] == 1  # the image's
    assert phase_upsamples(fold_batchnorm(random_generator("dcgan64"))) is None  # nothing to rewrite


def test_int8_tail_form_and_its_split_equal_the_tail():
    torch.manual_seed(0)
    conv_a, act, conv_b, out_act = (torch.nn.Conv2d(5, 6, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(6, 2, 3, padding=1), torch.nn.Tanh())
    plain = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), conv_a, act, conv_b, out_act).eval()
    form = PhaseTail(conv_a, act, conv_b, out_act, taps=False).eval()
    assert form.conv_b.kernel_size == (2, 2) and form.conv_b.out_channels == 8  # 4 phases x 2 channels
    x = torch.randn(4, 5, 7, 9)
    with torch.no_grad():
        want = plain(x)
        torch.testing.assert_close(form(x), want, atol=1e-5, rtol=0)
        w = form.conv_b.weight.clone()
        gain = form.split(7, rest_range=0.01, limit=4.0)
        assert gain == 256 and form.conv_b.out_channels == 16  # 2 ** floor(log2(4 / 0.01))
        torch.testing.assert_close(form(x), want, atol=1e-5, rtol=0)
        split = form.conv_b.weight.clone()
        finer = form.rounding_rest(7)  # the second level's rounding rest, in the weights' units
        assert 0 < finer.abs().max() <= (gain * (w - split[:8])).abs().max() / 128 / gain + 1e-12
        gain2 = form.split(7, rest_range=0.0001, limit=4.0)
        assert gain2 == 2 ** 15 and form.conv_b.out_channels == 24 and form.gains == [256, 2 ** 15]
        torch.testing.assert_close(form(x), want, atol=1e-5, rtol=0)
    rounded, rest = split[:8], split[8:] / gain
    step = w.abs().flatten(1).amax(1)[:, None, None, None] / 64  # the quantizer's 7-bit symmetric step
    levels = rounded / step
    assert torch.allclose(levels, levels.round(), atol=1e-4) and float(levels.abs().amax()) == pytest.approx(64)
    torch.testing.assert_close(rounded + rest, w, atol=1e-7, rtol=0)
    assert 0 < rest.abs().max() <= step.max() / 2 + 1e-7
    # three levels: the first unchanged, the second now on its own 7-bit grid, the third its rest; all add up to w
    three = form.conv_b.weight.detach()
    assert torch.equal(three[:8], rounded)
    second = three[8:16]
    step2 = second.abs().flatten(1).amax(1)[:, None, None, None] / 64
    assert torch.allclose(second / step2, (second / step2).round(), atol=1e-4)
    torch.testing.assert_close(three[:8] + three[8:16] / gain + three[16:] / gain2, w, atol=1e-7, rtol=0)
    assert PhaseTail(conv_a, act, conv_b, out_act, taps=False).split(7, rest_range=1.0, limit=0.0) == 1  # no room


def test_first_layer_gemm_equals_the_transposed_convolution():
    torch.manual_seed(0)
    convt = torch.nn.ConvTranspose2d(10, 6, 4, 1, 0, bias=False)
    x = torch.randn(3, 10, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(FirstLayerGemm(convt)(x), convt(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_phase_convt_tail_equals_the_two_transposed_convolutions(bn, channels):
    torch.manual_seed(channels)
    a, b = torch.nn.ConvTranspose2d(6, 5, 4, 2, 1), torch.nn.ConvTranspose2d(5, channels, 4, 2, 1, bias=bn)
    norm = torch.nn.BatchNorm2d(5).eval()
    norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
    norm.weight.data.uniform_(0.5, 1.5), norm.bias.data.uniform_(-1, 1)
    plain = torch.nn.Sequential(a, torch.nn.ReLU(), *([norm] if bn else []), b, torch.nn.Tanh()).eval()
    form = PhaseConvTTail(PhaseConvT(a, torch.nn.ReLU()), norm if bn else None, b, torch.nn.Tanh()).eval()
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        want, got = plain(x), form(x)
    assert got.shape == want.shape == (2, channels, 20, 28)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (want - torch.roll(want, 1, dims=-1)).abs().max() > 1e-2  # a wrong phase would not pass


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_transposed_forms_equal_the_generator(arch):
    g = random_generator(arch, seed=5)
    folded = fold_batchnorm(g)
    form = transposed_forms(folded, min_channels=1)  # rewrite every stride-2 layer however narrow
    if arch not in ("dcgan64", "mnist-convt"):
        assert form is None
        return
    assert isinstance(form.main[-1], PhaseConvTTail)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in form.main)
    assert isinstance(form.main[0], FirstLayerGemm) == (arch == "dcgan64")
    narrow = transposed_forms(folded, min_channels=10 ** 6)  # only the tail and the first layer
    assert isinstance(narrow.main[-1], PhaseConvTTail)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in narrow.main) == (2 if arch == "dcgan64" else 0)
    z = sample_prior(16, g.cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = g(z)
        for model in (form, narrow):
            torch.testing.assert_close(model(z), want, atol=1e-5, rtol=0)
    assert (want - torch.roll(want, 1, dims=-1)).abs().max() > 1e-2


@pytest.mark.slow
def test_every_architecture_exports_an_exact_int8_file(tmp_path):
    """Each architecture's int8 file is the same everywhere by the file: integer sums that cannot saturate, and
    no other op that is not exactly rounded (tanh a lookup; mnist-convt's unfoldable BatchNorm as x * scale +
    shift, which equals it, in float; no Add or Mul that onnxruntime would fuse into its own QLinear kernels)."""
    from dcgan_deploy import int8, modelfile
    from dcgan_deploy.forms import ChannelAffine
    for arch in ARCHITECTURES:
        g = random_generator(arch)
        if arch == "mnist-convt":
            form = int8_form(g)
            assert any(isinstance(m, ChannelAffine) for m in form.main)
            assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in form.main)
            z = torch.randn(16, g.cfg.latent_dim)
            with torch.no_grad():
                torch.testing.assert_close(form(z), g.eval()(z), atol=1e-5, rtol=0)
        path = tmp_path / f"{arch}.onnx"
        result = export(saved(tmp_path, g, f"{arch}.safetensors"), path, int8=True)
        assert result["int8"]["parity"]["passed"], arch
        report = int8.report(modelfile.read(tmp_path / f"{arch}-int8.onnx"))
        assert report["portable"] and report["inexact_ops"] == [] and report["layers"], arch
        ops = {n.op_type for n in onnx.load(str(tmp_path / f"{arch}-int8.onnx")).graph.node}
        assert "GatherElements" in ops and not ops & {"Tanh", "BatchNormalization"}, arch


def test_the_gate_holds_an_int8_file_to_the_same_values():
    """Against the Python runtime an int8 file must give the same values on another backend (``exact``): a float
    difference in the last bits (float tanh, say) fails there, while a float32 file may differ by 1e-4."""
    from dcgan_deploy.gate import misses
    m = {"finite": True, "max_abs": 3e-7, "mean_abs": 1e-8, "psnr": 140.0, "changed": 0.0}
    assert misses(m, "wasm-1-thread", Thresholds()) == []
    assert misses(m, "wasm-1-thread", Thresholds(), exact=True) == ["max abs error 3e-07 > 0"]
    assert misses({**m, "max_abs": 0.0}, "wasm-1-thread", Thresholds(), exact=True) == []
    assert misses({**m, "max_abs": 0.0, "changed": 1e-5}, "wasm-1-thread", Thresholds(), exact=True) == [
        "0.001% of uint8 pixels changed > 0.000%"]
