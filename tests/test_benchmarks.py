"""benchmarks/: the matrix-product ceiling's arithmetic, and every script run once in its smallest form
(``--smoke`` or tiny options), so that none of them can rot. Their figures are not checked here:
speed is judged by running them, in BENCHMARKS.md."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, load_script

pytestmark = pytest.mark.slow  # every benchmark script, run whole: the full suite's, not the fast lane's

sys.path.insert(0, str(ROOT / "benchmarks"))
ceiling = load_script("benchmarks/ceiling.py", "ceiling")


def test_macs_are_counted_from_the_graph(tiny_model):
    assert ceiling.count_macs(tiny_model) == 8 * 36  # one Gemm, z[8] -> 36 pixels


def test_placement_weights_count_no_multiply_adds(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    place = np.zeros((4, 8), np.float32)
    place[np.arange(4), 2 * np.arange(4)] = 1          # a placement matrix: a copy or a zero
    shift = np.zeros((3, 1, 3, 3), np.float32)
    shift[:, 0, 0, 2] = 1                              # depthwise one-hot shift
    dense = np.full((4, 8), 0.5, np.float32)           # real arithmetic
    summing = np.ones((3, 1, 3, 3), np.float32)        # 0/1 but adds nine values: arithmetic
    x = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("MatMul", ["z", "place"], ["a"]), helper.make_node("MatMul", ["z", "dense"], ["b"]),
             helper.make_node("Conv", ["z", "shift"], ["c"], group=3, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["z", "summing"], ["d"], group=3, pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["a", "b"], ["e"], axis=3),
             helper.make_node("Concat", ["c", "d"], ["y_"], axis=3), helper.make_node("Identity", ["y_"], ["y"])]
    inits = [numpy_helper.from_array(v, k) for k, v in
             {"place": place, "dense": dense, "shift": shift, "summing": summing}.items()]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "g.onnx")
    assert ceiling.count_macs(tmp_path / "g.onnx") == 3 * 4 * 4 * 8 + 3 * 4 * 4 * 9  # dense MatMul + summing Conv


def test_ceiling_figures_compare_each_round_like_with_like():
    # Three rounds; the machine ran at half speed in the second, for onnxruntime and the ceiling alike.
    flops = 2 * 1024 ** 3
    row = {"batch": 1, "p50_ms": 1000.0, "rounds_ms": {"ort": [1000.0, 2000.0, 1000.0],
                                                       "ceiling": [1e3 * flops / 2e9, 1e3 * flops / 1e9, 1e3 * flops / 2e9]},
           "best_ms": {"ceiling": 1e3 * flops / 2.5e9}}
    out = ceiling.ceiling_figures(row, macs=5 * 10 ** 8, threads=1)
    assert out["gflops"] == 1.0                          # 1e9 FLOP in the median time of 1 s
    assert out["ceiling_gflops"] == 2.0 and out["ceiling_best_gflops"] == 2.5
    assert out["share_of_ceiling"] == 0.5 and out["share_range"] == [0.5, 0.5]  # the slow round cancels out
    assert out["share_of_best_ceiling"] == 0.4           # against the single fastest product: stricter
    assert ceiling.ceiling_figures(row, macs=None, threads=1) == {}  # nothing to compare: no made-up figures


def test_the_ceiling_summary_spans_the_rows():
    rows = [{"ceiling_gflops": 200.0, "ceiling_best_gflops": 250.0}, {"ceiling_gflops": 240.0, "ceiling_best_gflops": 260.0},
            {"images_per_s": 1.0}, {"ceiling_gflops": 220.0, "ceiling_best_gflops": 255.0}]
    c = ceiling.ceiling_summary(rows, threads=1)
    assert (c["gflops"], c["range"], c["best_gflops"], c["size"]) == (220.0, [200.0, 240.0], 260.0, 1024)
    alone = ceiling.ceiling_summary([{"images_per_s": 1.0}], threads=1)  # no row measured one: measured alone
    assert 0 < alone["gflops"] <= alone["best_gflops"] and alone["range"] == [alone["gflops"]] * 2


def test_a_model_timed_with_the_ceiling_gets_its_share(tiny_model):
    row = ceiling.timed_with_ceiling(tiny_model, 1, [4], 0.05, rounds=2)[0]
    assert row["gflops"] > 0 and 0 < row["share_range"][0] <= row["share_of_ceiling"] <= row["share_range"][1]
    assert 0 < row["ceiling_gflops"] <= row["ceiling_best_gflops"]
    assert row["share_of_best_ceiling"] == pytest.approx(row["gflops"] / row["ceiling_best_gflops"], rel=1e-3)


def test_without_torch_the_ceiling_is_numpys():
    code = ("import sys; sys.modules['torch'] = None\n"  # a runtime-only install: no torch to import
            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            "import ceiling; print(ceiling.matmul_ceiling(1, size=128, seconds=0.05)['backend'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("numpy")


SCRIPTS = {
    "generate_speed.py": ["--smoke"],
    "int8_quant.py": ["--smoke"],
    "upsample_forms.py": ["--smoke"],
    "convt_forms.py": ["--smoke"],
    "export_form_ab.py": ["--rounds", "1", "--seconds", "0.02", "--batch-size", "2"],
    "gemm_libraries.py": ["--seconds", "0.01", "--rounds", "1"],
    "cli_scale.py": ["--repeats", "1", "--small", "20", "--large", "40"],
    "train_throughput.py": ["--smoke", "--steps", "1", "--batch-size", "4"],
}
NEEDS = {"web_speed.py": "node, npm ci and chromium", "serve_speed.py": "a Ray cluster: run in tests/test_serve.py"}


def test_every_script_has_a_smoke_run():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")} - {"common.py", "ceiling.py", "weights.py"}
    assert scripts <= set(SCRIPTS) | set(NEEDS) | {"gpu_torch.py", "openvino_compare.py", "gpu_check.py"}


def test_the_web_speed_script_runs():
    from dcgan_deploy import web
    if web.local_dist() is None or web.find_browser() is None or not shutil.which("node"):
        pytest.skip("needs Node, npm ci and chromium")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "web_speed.py"), "--smoke"], capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    row = out["rows"][0]
    assert all(row[f"{k}_images_per_s"] > 0 for k in ("native-1", "chromium-wasm-1", "chromium-wasm-2", "node-wasm-1"))
    assert out["ceiling"]["native-1_gflops"] > 0 and out["ceiling"]["node-wasm-1_gflops"] > 0
    assert not (ROOT / ".web_speed_node.mjs").exists() and not (ROOT / ".web_speed_gemm.mjs").exists()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_the_script_runs(script):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *SCRIPTS[script]], capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert isinstance(json.loads(last), dict)  # each ends with its figures as one JSON line


def test_the_openvino_comparison_runs_or_skips_cleanly():
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "openvino_compare.py"), "--smoke", "--profile"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    cells = {(row["precision"], row["batch"]) for row in result["rows"]}
    assert cells == {("fp32", 2), ("int8", 2)}
    for row in result["rows"]:  # both runtimes ran the same file and gave the same images
        assert row["ort_images_per_s"] > 0 and row["openvino_images_per_s"] > 0 and row["ort_vs_openvino"] > 0
        assert row["psnr_openvino_db"] > (40 if row["precision"] == "fp32" else 25)
        assert row["openvino_kernels"]  # the compute layers were found in the compiled model
        # --profile: both runtimes' product ops were found in their own profiles, and the rest beside them
        p = row["profile"]
        assert p["onnxruntime"]["products_ms"] > 0 and p["openvino"]["products_ms"] > 0
        assert p["onnxruntime"]["rest_ms"] > 0 and p["onnxruntime"]["slowest_rest"]
        assert p["ort_products_vs_openvino_run"] == pytest.approx(p["onnxruntime"]["products_ms"] / p["openvino_run_ms"],
                                                                  rel=0.01)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gets")
def test_the_gpu_script_says_it_needs_a_gpu():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_torch.py")], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode != 0 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_the_gpu_check_runs_every_step_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.py, the one command for a lent GPU, runs here on the CPU provider at tiny sizes, so it
    cannot rot while no GPU is at hand: every step reported, the log written."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["device"] == "cpu" and report["smoke"] is True and "cuda" in report
    steps = report["steps"]
    assert list(steps) == ["cuda_tests", "parity", "bench", "first_image"]
    assert all(s["status"] == "passed" and s["seconds"] >= 0 for s in steps.values())
    assert steps["parity"]["models"]["mnist"]["passed"] and steps["parity"]["fp16"]["passed"] is not False
    assert {row["batch"] for row in steps["bench"]["rows"]} == {2, 4}
    assert all(row["images_per_s"] > 0 and row["bound_images_per_s"] > 0 for row in steps["bench"]["rows"])
    assert steps["first_image"]["first_image_s"]["DEFAULT"] > 0
    assert "gpu_check done" in (tmp_path / "r" / "log.txt").read_text()
