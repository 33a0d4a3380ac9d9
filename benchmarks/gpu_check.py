"""Every GPU check in one command: a JSON report and a log written into a folder.

    python benchmarks/gpu_check.py --out gpu-report/            # on a machine with onnxruntime-gpu and a GPU
    python benchmarks/gpu_check.py --out /tmp/check --smoke     # anywhere: the CPU provider, tiny sizes

1. ``cuda_tests``: the ``cuda``-marked tests (``pytest -m cuda``).
2. ``parity``: the parity gate of every bundled float32 model whose trained weights are at hand (the
   shipped ``mnist``'s, and ``emoji64``'s from the commit its record names), on every provider present --
   CUDA among them -- and the fp16 variant of ``mnist`` under its own gate (on CUDA where there is one);
   ``cpu_vs_cuda``: the difference between CPU and CUDA images for the same seeds (seeds 0-2, 64 images).
3. ``bench``: ``bench --io-binding --cuda-graph`` at batch 256, 4,096 and 32,768 for every architecture
   (the shipped weights for ``mnist-dcgan``, stand-ins of the same size for the others), beside PyTorch
   eager, and ``benchmarks/gpu_torch.py`` (PyTorch's best modes) in the same run.
4. ``first_image``: seconds from starting a fresh process to its first image, with cuDNN's convolution
   search (onnxruntime's ``cudnn_conv_algo_search``) in each mode; the fastest is the report's
   ``recommended_cudnn_conv_algo_search``.

Each step's outcome (``passed`` / ``failed`` / ``skipped`` with why), its seconds and its figures go into
``report.json``; what the steps print goes into ``log.txt``. Without a GPU (or with ``--smoke``) every step
runs on the CPU provider at tiny sizes, so the command stays working while no GPU is at hand; the report
says what ran where. Budget on an H100: under 8 minutes.
"""
import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from dcgan_deploy import cpu, session
from dcgan_deploy.bench import bench_model
from dcgan_deploy.bundled import bundled_models
from dcgan_deploy.checkpoint import open_checkpoint, save_generator
from dcgan_deploy.export import export, verify
from dcgan_deploy.images import compare_images
from dcgan_deploy.nets import ARCHITECTURES, TorchRunners
from dcgan_deploy.runtime import Generator

from common import trained_like
from weights import recorded_weights

ROOT = Path(__file__).resolve().parent.parent
SEARCH_MODES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
FIRST_IMAGE = """
import sys, time
start = float(sys.argv[4])
from dcgan_deploy import Generator
gen = Generator.load(sys.argv[1], device=sys.argv[2], cuda_options={"cudnn_conv_algo_search": sys.argv[3]})
gen.generate(1, seed=0)
print(time.time() - start)
"""


class Report:
    """The report and the log, written as each step ends (a step that crashes the run leaves the rest)."""

    def __init__(self, out: Path, facts: dict):
        self.out, self.data = out, {**facts, "steps": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "log.txt", "w")

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self.log_file.write(text.rstrip() + "\n")
        self.log_file.flush()

    def step(self, name: str, fn) -> None:
        self.log(f"== {name}")
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 -- a failed step is reported, and the next one runs
            result = {"status": "failed", "reason": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
        result = {"status": "passed", **result, "seconds": round(time.perf_counter() - start, 1)}
        self.data["steps"][name] = result
        self.log(f"   {result['status']} in {result['seconds']} s" + (f": {result['reason']}" if "reason" in result else ""))
        (self.out / "report.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def run_logged(report: Report, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    report.log(r.stdout[-4000:] + r.stderr[-4000:])
    return r


def cuda_tests(report: Report) -> dict:
    r = run_logged(report, [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"], 600)
    summary = (r.stdout.strip().splitlines() or [""])[-1]
    return {"status": "passed" if r.returncode in (0, 5) else "failed", "summary": summary,
            **({"reason": summary} if r.returncode not in (0, 5) else {})}


def parity(report: Report, device: str, smoke: bool, tmp: Path) -> dict:
    out, failures = {"models": {}, "cpu_vs_cuda": {}}, []
    names = ["mnist"] if smoke else ["mnist", "emoji64"]
    for name in names:
        weights = recorded_weights(name, tmp)
        if weights is None:
            out["models"][name] = {"status": "skipped", "reason": "its trained weights are not at hand"}
            continue
        r = verify(bundled_models()[name], weights)
        out["models"][name] = {"passed": r["passed"], "providers": r["providers"], "worst": r["worst"]}
        failures += [f"{name}: {f}" for f in r["failures"]]
        if device == "cuda":
            on_cpu, on_cuda = Generator.load(name, device="cpu"), Generator.load(name, device="cuda")
            diffs = [compare_images(on_cpu.run(z), on_cuda.run(z)) for z in (on_cpu.latents(64, s) for s in (0, 1, 2))]
            out["cpu_vs_cuda"][name] = {"max_abs": max(d["max_abs"] for d in diffs),
                                        "changed": max(d["changed"] for d in diffs), "images": 3 * 64}
        report.log(f"   {name}: {out['models'][name]}")
    weights = recorded_weights("mnist", tmp)
    fp16 = export(weights, tmp / "mnist.onnx", fp16=True)["fp16"]["parity"]
    out["fp16"] = {k: fp16.get(k) for k in ("passed", "verified", "reason", "providers", "worst")}
    if fp16.get("passed") is False:
        failures.append("fp16: " + "; ".join(fp16.get("failures", [])))
    if device != "cuda":
        out["cpu_vs_cuda"] = "no CUDA provider here"
    return {**out, **({"status": "failed", "reason": failures[0]} if failures else {})}


def bench(report: Report, device: str, smoke: bool, tmp: Path) -> dict:
    batches, seconds = ([2, 4], 0.05) if smoke else ([256, 4096, 32768], 1.0)
    rows = []
    for arch in ARCHITECTURES[:1] if smoke else ARCHITECTURES:
        g = open_checkpoint(recorded_weights("mnist", tmp)).model if arch == "mnist-dcgan" and not smoke \
            else trained_like(arch, smoke)
        save_generator(g.state_dict(), g.cfg, tmp / f"{arch}.safetensors")
        model = export(tmp / f"{arch}.safetensors", tmp / f"{arch}.onnx")["model"]
        for row in bench_model(model, device, batches, threads=1, seconds=seconds, rounds=1 if smoke else 3,
                               torch_model=TorchRunners(g) if device == "cpu" or _torch_cuda() else None,
                               bound=True, cuda_graph=device == "cuda"):
            row["architecture"] = arch
            rows.append(row)
            report.log("   " + json.dumps({k: row.get(k) for k in ("architecture", "batch", "images_per_s",
                                                                    "bound_images_per_s", "graph_images_per_s",
                                                                    "speedup_vs_torch")}))
    out = {"rows": rows}
    if device == "cuda" and _torch_cuda():
        r = run_logged(report, [sys.executable, str(ROOT / "benchmarks" / "gpu_torch.py"), "--batch-size",
                                ",".join(map(str, batches)), "--json", str(report.out / "gpu_torch.json")], 600)
        out["gpu_torch"] = json.loads((report.out / "gpu_torch.json").read_text()) if r.returncode == 0 else \
            f"failed: {r.stderr.strip().splitlines()[-1:]}"
    else:
        out["gpu_torch"] = "skipped: needs a CUDA GPU and a CUDA build of torch"
    return out


def first_image(report: Report, device: str, smoke: bool) -> dict:
    modes = SEARCH_MODES if device == "cuda" else ("DEFAULT",)  # on the CPU the mode means nothing: once
    times = {}
    for mode in modes:
        r = run_logged(report, [sys.executable, "-c", FIRST_IMAGE, str(bundled_models()["mnist"]), device, mode,
                                repr(time.time())], 300)
        times[mode] = round(float(r.stdout.strip().splitlines()[-1]), 2) if r.returncode == 0 else None
    measured = {m: t for m, t in times.items() if t is not None}
    out = {"device": device, "first_image_s": times}
    if device == "cuda" and measured:
        out["recommended_cudnn_conv_algo_search"] = min(measured, key=measured.get)
    if len(measured) < len(times):
        out.update(status="failed", reason=f"no first image with {sorted(set(times) - set(measured))}")
    return out


def _torch_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the folder for report.json and log.txt")
    ap.add_argument("--smoke", action="store_true", help="the CPU provider and tiny sizes, even with a GPU")
    args = ap.parse_args()
    device = "cuda" if session.CUDA in ort.get_available_providers() and not args.smoke else "cpu"
    facts = {"device": device, "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
             "cuda": session.cuda_status(), "cpu": cpu.features(), "python": platform.python_version(),
             "smoke": args.smoke}
    if device == "cuda" and _torch_cuda():
        import torch
        facts.update(gpu=torch.cuda.get_device_name(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version())
        try:
            facts["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                             capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            facts["driver"] = "nvidia-smi not found"
    report = Report(args.out, facts)
    report.log(f"gpu_check on {device}: " + json.dumps({k: v for k, v in facts.items() if k != "cpu"}))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report.step("cuda_tests", lambda: cuda_tests(report))
        report.step("parity", lambda: parity(report, device, args.smoke, Path(tmp)))
        report.step("bench", lambda: bench(report, device, args.smoke, Path(tmp)))
        report.step("first_image", lambda: first_image(report, device, args.smoke))
    report.data["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "report.json").write_text(json.dumps(report.data, indent=2, default=str) + "\n")
    failed = [n for n, s in report.data["steps"].items() if s["status"] == "failed"]
    report.log(f"gpu_check done in {report.data['seconds']} s; " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
