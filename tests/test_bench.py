import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcgan_deploy import bench
from dcgan_deploy.bundled import bundled_models
from dcgan_deploy.cli import main
from dcgan_deploy.nets import NetConfig


def test_bench_report_is_well_formed(tiny_model, tmp_path):
    from conftest import make_model
    ckpt_free = make_model(tmp_path / "b.onnx", latent_dim=4)
    r = CliRunner().invoke(main, ["bench", "-m", str(tiny_model), "-m", str(ckpt_free), "--batch-size", "1,4",
                                  "--seconds", "0.05", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["threads"] == 1 and "ceiling" not in result
    rows = result["rows"]
    assert [(row["model"], row["batch"]) for row in rows] == [("tiny", 1), ("tiny", 4), ("b", 1), ("b", 4)]
    for row in rows:
        assert row["images_per_s"] > 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["rounds"] == 5 and len(row["rounds_ms"]["ort"]) == 5 and row["best_ms"]["ort"] > 0
        assert row["provider"] == "CPUExecutionProvider" and "gflops" not in row
    text = CliRunner().invoke(main, ["bench", "-m", str(tiny_model), "--batch-size", "2", "--seconds", "0.05"])
    assert text.exit_code == 0 and "img/s" in text.output and "p99_ms" in text.output


def test_peers_are_timed_in_the_same_rounds(tiny_model):
    calls = []

    def peer(gen, z):
        return (lambda: calls.append(len(z))), 0.5, 2
    row = bench.bench_model(tiny_model, "cpu", [3], 1, 0.05, rounds=3, peers={"other": peer})[0]
    assert len(row["rounds_ms"]["other"]) == 3 and set(calls) == {3} and len(calls) >= 3 * 2
    assert row["other_images_per_s"] > 0
    lo, hi = row["speedup_vs_other_range"]
    assert lo <= row["speedup_vs_other"] <= hi


def test_bench_with_a_checkpoint_compares_pytorch_side_by_side(tmp_path):
    from conftest import recorded_weights
    ckpt = recorded_weights("mnist", tmp_path)
    r = CliRunner().invoke(main, ["bench", "--batch-size", "8", "--seconds", "0.1", "--ckpt", str(ckpt), "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)["rows"][0]
    assert row["torch_images_per_s"] > 0
    assert row["speedup_range"][0] <= row["speedup_vs_torch"] <= row["speedup_range"][1]


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile (inductor) needs a C++ compiler")
def test_bench_compiles_the_pytorch_generator_beside_eager(tmp_path):
    from dcgan_deploy.checkpoint import save_generator
    from dcgan_deploy.export import export
    from dcgan_deploy.nets import GeneratorNet as Generator
    g = Generator(NetConfig.for_arch("mnist-mlp", g_width=16)).eval()
    save_generator(g.state_dict(), g.cfg, tmp_path / "g.safetensors")
    export(tmp_path / "g.safetensors", tmp_path / "g.onnx")
    r = CliRunner().invoke(main, ["bench", "-m", str(tmp_path / "g.onnx"), "--ckpt", str(tmp_path / "g.safetensors"),
                                  "--compile", "--batch-size", "4", "--seconds", "0.1", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)["rows"][0]
    assert row["compiled_images_per_s"] > 0 and row["torch_images_per_s"] > 0 and row["compile_s"] > 0
    lo, hi = row["speedup_vs_compiled_range"]
    assert lo <= row["speedup_vs_compiled"] <= hi and "compile_error" not in row


def test_a_generator_that_cannot_be_compiled_is_reported_not_raised():
    class Broken(torch.nn.Module):
        def forward(self, z):
            raise RuntimeError("no kernel for this")
    from dcgan_deploy.nets import TorchRunners
    run, seconds, why = TorchRunners(Broken()).compiled(np.zeros((2, 3), np.float32), threads=1)
    assert run is None and seconds is None and why == "RuntimeError: no kernel for this"


def test_compiled_rounds_are_summarized_like_eager():
    medians = {"ort": [1.0, 2.0, 1.0], "torch": [3.0, 6.0, 3.0], "compiled": [1.5, 2.0, 2.5]}
    times = {k: v * 2 for k, v in medians.items()}
    out = bench.summarize_rounds(medians, times, batch=4)
    assert out["speedup_vs_torch"] == 3.0 and out["speedup_range"] == [3.0, 3.0]
    assert out["speedup_vs_compiled"] == 1.5 and out["speedup_vs_compiled_range"] == [1.0, 2.5]
    assert out["compiled_images_per_s"] == 2.0  # 4 images in the median 2.0 s
    table = bench.format_table({"cpu": "x", "threads": 1, "onnxruntime": "v", "rows": [
        {"model": "m", "batch": 4, "session_s": 0.1, "first_run_s": 0.1, "images_per_s": 4.0, "p50_ms": 1.0,
         "p95_ms": 1.0, "p99_ms": 1.0, **out},
        {"model": "n", "batch": 4, "session_s": 0.1, "first_run_s": 0.1, "images_per_s": 4.0, "p50_ms": 1.0,
         "p95_ms": 1.0, "p99_ms": 1.0, "compile_error": "RuntimeError: no compiler"}]})
    assert "compiled" in table.splitlines()[1] and "torch.compile failed: RuntimeError: no compiler" in table


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "a"], "comma-separated"), (["--batch-size", "0"], "from 1 to"),
    (["--batch-size", str(1 << 30)], "from 1 to"), (["--seconds", "inf"], "--seconds must be from"),
    (["--seconds", "nan"], "--seconds must be from"), (["--seconds", "0"], "--seconds must be from"),
    (["--threads", "100000"], "threads=100000 is more than"), (["--compile"], "--ckpt"),
])
def test_bench_rejects_bad_arguments(tiny_model, args, message):
    r = CliRunner().invoke(main, ["bench", "-m", str(tiny_model), *args])
    assert r.exit_code == 1 and message in r.output, r.output
    r = CliRunner().invoke(main, ["bench", "-m", str(tiny_model), "-m", str(tiny_model), "--ckpt", "x.pt"])
    assert r.exit_code == 1 and "one -m" in r.output


def test_ratios_compare_each_round_like_with_like():
    # Three rounds; the machine ran at half speed in the second, for onnxruntime and PyTorch alike.
    medians = {"ort": [1.0, 2.0, 1.0], "torch": [2.0, 4.0, 3.0]}
    times = {"ort": [1.0, 1.0, 2.0, 2.0, 1.0, 1.0], "torch": [2.0] * 6}
    out = bench.summarize_rounds(medians, times, batch=1)
    assert out["speedup_vs_torch"] == 2.0 and out["speedup_range"] == [2.0, 3.0]  # the slow round cancels out
    assert out["torch_images_per_s"] == 0.5
    assert bench.summarize_rounds({"ort": [1.0]}, {"ort": [1.0]}, batch=1) == {}  # nothing to compare: no figures


def test_io_binding_runs_the_same_graph_in_place(rgb_model):
    from dcgan_deploy.runtime import Generator
    gen = Generator.load(rgb_model, device="cpu", threads=1)
    z = gen.latents(3, seed=4)
    run, image = bench.bound_run(gen, z)
    assert image.device_name() == "cpu" and image.shape() == [3, 3, 4, 5]
    run()
    first = image.numpy().copy()
    np.testing.assert_array_equal(first, gen.run(z))  # the bound buffer holds what a plain run returns
    run()
    np.testing.assert_array_equal(image.numpy(), first)


def test_bench_times_io_binding_beside_a_plain_run(rgb_model):
    r = CliRunner().invoke(main, ["bench", "-m", str(rgb_model), "--batch-size", "2,5", "--seconds", "0.05",
                                  "--threads", "1", "--io-binding", "--json"])
    assert r.exit_code == 0, r.output
    for row in json.loads(r.output)["rows"]:
        assert row["bound_images_per_s"] > 0
        lo, hi = row["bound_vs_run_range"]
        assert 0 < lo <= row["bound_vs_run"] <= hi and "graph_images_per_s" not in row
    text = CliRunner().invoke(main, ["bench", "-m", str(rgb_model), "--batch-size", "2", "--seconds", "0.05",
                                     "--io-binding"]).output
    assert "bound" in text.splitlines()[1] and "x run" in text.splitlines()[1] and "IO binding" in text


def test_cuda_graphs_are_refused_off_cuda(tiny_model):
    r = CliRunner().invoke(main, ["bench", "-m", str(tiny_model), "--device", "cpu", "--cuda-graph"])
    assert r.exit_code == 1 and "--cuda-graph needs --device cuda" in r.output
    with pytest.raises(ValueError, match="CUDA graphs need the CUDA provider"):
        bench.bench_model(tiny_model, "cpu", [2], 1, 0.05, cuda_graph=True)


def test_a_graph_that_cannot_be_captured_is_reported_not_raised(tiny_model, monkeypatch):
    from dcgan_deploy.runtime import Generator
    # a session that reports CUDA on a build without it: the graph session cannot be opened
    monkeypatch.setattr(Generator, "device", property(lambda self: "cuda"))
    row = bench.bench_model(tiny_model, "cpu", [2], 1, 0.05, cuda_graph=True)[0]
    assert row["images_per_s"] > 0 and "graph_images_per_s" not in row
    assert row["graph_error"].startswith("ModelError: ") and "CUDA" in row["graph_error"]
    table = bench.format_table({"cpu": "x", "threads": 1, "onnxruntime": "v", "rows": [row]})
    assert "CUDA graph failed: ModelError" in table


def test_device_resident_modes_are_compared_with_run_and_pytorch():
    medians = {"ort": [2.0, 4.0], "bound": [1.0, 1.0], "graph": [0.5, 1.0], "torch": [4.0, 4.0]}
    times = {k: v * 3 for k, v in medians.items()}
    out = bench.summarize_rounds(medians, times, batch=2)
    assert out["bound_vs_run"] == 3.0 and out["bound_vs_run_range"] == [2.0, 4.0]   # per round: 2/1, 4/1
    assert out["graph_vs_run"] == 4.0 and out["graph_vs_run_range"] == [4.0, 4.0]
    assert out["graph_vs_torch"] == 6.0 and out["graph_vs_torch_range"] == [4.0, 8.0]
    assert out["bound_images_per_s"] == 2.0 and out["graph_images_per_s"] == 2.7  # 2 images in 1.0 s, in 0.75 s
    table = bench.format_table({"cpu": "x", "threads": 1, "onnxruntime": "v", "rows": [
        {"model": "m", "batch": 2, "session_s": 0.1, "first_run_s": 0.1, "images_per_s": 1.0, "p50_ms": 1.0,
         "p95_ms": 1.0, "p99_ms": 1.0, **out}]})
    header, row = table.splitlines()[1:3]
    assert header.split()[-6:] == ["bound", "x", "run", "graph", "x", "run"]
    assert row.split()[-4:] == ["2.0", "3.00", "2.7", "4.00"]


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="needs onnxruntime-gpu")
def test_cuda_graph_replays_what_a_plain_run_computes(rgb_model):
    from dcgan_deploy.runtime import Generator
    gen = Generator.load(rgb_model, device="cuda")
    z = gen.latents(16, seed=2)
    run, image = bench.graphed_run(gen, z, threads=1)
    run()
    assert image.device_name() == "cuda"
    np.testing.assert_allclose(image.numpy(), gen.run(z), atol=1e-5)
    row = bench.bench_model(rgb_model, "cuda", [16], 1, 0.1, bound=True, cuda_graph=True)[0]
    assert row["provider"] == "CUDAExecutionProvider" and row["graph_images_per_s"] > 0 and row["bound_vs_run"] > 0


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers()
                    or not torch.cuda.is_available(), reason="needs onnxruntime-gpu and a CUDA build of torch")
def test_on_cuda_pytorch_is_timed_on_the_gpu_too(tmp_path):
    from dcgan_deploy.checkpoint import save_generator
    from dcgan_deploy.export import export
    from dcgan_deploy.nets import GeneratorNet as Generator
    g = Generator(NetConfig.for_arch("mnist-mlp", g_width=16)).eval()
    save_generator(g.state_dict(), g.cfg, tmp_path / "g.safetensors")
    export(tmp_path / "g.safetensors", tmp_path / "g.onnx")
    from dcgan_deploy.nets import TorchRunners
    row = bench.bench_model(tmp_path / "g.onnx", "cuda", [32], 1, 0.1, torch_model=TorchRunners(g), cuda_graph=True)[0]
    assert next(g.parameters()).is_cuda and row["torch_images_per_s"] > 0 and row["graph_vs_torch"] > 0
