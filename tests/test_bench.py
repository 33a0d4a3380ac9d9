import json

import pytest
from click.testing import CliRunner

from dcgan_deploy import bench
from dcgan_deploy.bundled import bundled_models
from dcgan_deploy.cli import main
from dcgan_deploy.nets import NetConfig


def test_macs_are_counted_from_the_graph(tiny_model):
    assert bench.count_macs(tiny_model) == 8 * 36  # one Gemm, z[8] -> 36 pixels
    c = NetConfig.for_arch("mnist-dcgan")
    w = c.g_width
    expected = (c.latent_dim * w // 2 * 49                 # Linear -> 32x7x7
                + 7 * 7 * w * (w // 2) * 9                 # conv at 7x7
                + 14 * 14 * 2 * w * w * 9                  # conv at 14x14
                # the export's tail (forms.PhaseTail): the 28x28 convolution as four 2x2 convolutions
                # at 14x14 (one per output parity), the output conv as four 1x1 convolutions to 16 tap
                # maps and a grouped 3x3 shift (4 groups of 4 taps) to the 4 output parities
                + 4 * 14 * 14 * w * 2 * w * 4
                + 4 * 14 * 14 * 16 * w
                + 14 * 14 * 4 * 4 * 9)
    assert bench.count_macs(bundled_models()["mnist"]) == expected


def test_bench_report_is_well_formed(tiny_model, tmp_path):
    from conftest import make_model
    ckpt_free = make_model(tmp_path / "b.onnx", latent_dim=4)
    r = CliRunner().invoke(main, ["bench", "-m", str(tiny_model), "-m", str(ckpt_free), "--batch-size", "1,4",
                                  "--seconds", "0.05", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["threads"] == 1 and result["ceiling"]["gflops"] > 0
    rows = result["rows"]
    assert [(row["model"], row["batch"]) for row in rows] == [("tiny", 1), ("tiny", 4), ("b", 1), ("b", 4)]
    for row in rows:
        assert row["images_per_s"] > 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["gflops"] > 0 and 0 < row["share_of_ceiling"]
        assert row["provider"] == "CPUExecutionProvider"
    text = CliRunner().invoke(main, ["bench", "-m", str(tiny_model), "--batch-size", "2", "--seconds", "0.05"])
    assert text.exit_code == 0 and "GFLOP/s" in text.output and "ceiling" in text.output


def test_bench_with_a_checkpoint_compares_pytorch_side_by_side():
    from pathlib import Path
    ckpt = Path(__file__).resolve().parent.parent / "training" / "mnist" / "generator.safetensors"
    r = CliRunner().invoke(main, ["bench", "--batch-size", "8", "--seconds", "0.1", "--ckpt", str(ckpt), "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)["rows"][0]
    assert row["torch_images_per_s"] > 0 and row["speedup_vs_torch"] == round(row["images_per_s"] / row["torch_images_per_s"], 2)


def test_bench_rejects_bad_arguments(tiny_model):
    for args, message in ((["--batch-size", "a"], "comma-separated"), (["--batch-size", "0"], "at least 1"),
                          (["-m", str(tiny_model), "-m", str(tiny_model), "--ckpt", "x.pt"], "one -m")):
        r = CliRunner().invoke(main, ["bench", *args])
        assert r.exit_code == 1 and message in r.output, r.output


def test_the_ceiling_is_the_higher_of_before_and_after():
    rows = [{"gflops": 50.0}, {"images_per_s": 1.0}]  # the second row has no GFLOP/s (no onnx to count)
    low = {"backend": "test", "size": 1024, "gflops": 1e-3}  # a ceiling measured on a stalled core
    c = bench.settle_ceiling(low, rows, threads=1)
    assert c["gflops"] > 1 and c["measured_gflops"][0] == 0.0 and c["measured_gflops"][1] == round(c["gflops"], 1)
    assert rows[0]["share_of_ceiling"] == pytest.approx(50.0 / c["gflops"], rel=1e-3)
    assert "share_of_ceiling" not in rows[1]
    high = {"backend": "test", "size": 1024, "gflops": 1e9}
    assert bench.settle_ceiling(high, rows, threads=1)["gflops"] == 1e9 and rows[0]["share_of_ceiling"] == 5e-8
