"""onnxruntime against OpenVINO on the CPU: the same exported files, the same latents, the same threads,
in alternating rounds (with PyTorch eager and the matrix-product ceiling in the same rounds).

    pip install openvino nncf
    python benchmarks/openvino_compare.py [--threads 2] [--seconds 3] [--runs 3] [--arch A]... [--smoke]

For each architecture (stand-in weights with realistic BatchNorm statistics; mnist-dcgan the bundled
trained model) at batch 1 and 64:

- fp32: the file `dcgan-deploy export` writes, run by onnxruntime (the runtime's session) and by
  OpenVINO (``compile_model`` of the same .onnx, static batch, ``INFERENCE_PRECISION_HINT=f32``,
  ``INFERENCE_NUM_THREADS`` = the threads);
- int8: `export --int8`'s file in onnxruntime, against OpenVINO's own int8 of the same float graph that
  file is quantized from, less the last layer's split (``deploy_form(model, int8=True)``: NNCF's int8 of
  the fp32 file's per-tap tail is several dB worse, and of the split form (``export.int8_form``, made for
  the export's 7-bit rounding) 6 dB worse on the bundled model): NNCF post-training quantization
  calibrated on the same latents (seeds 1000-1007 x 64); both PSNRs against the fp32 images of the same
  256 latents.

``ort/ov`` is the median over the rounds of OpenVINO's time / onnxruntime's (above 1: onnxruntime is
faster). ``openvino_kernels``: what OpenVINO's CPU plugin picked for the compute layers (``amx`` in a
name: Intel AMX tiles, which onnxruntime's CPU kernels do not use). ``--runs`` repeats everything (the
VM drifts). ``--profile`` adds where each runtime's time goes at every batch size, from the runtimes' own
per-op profiles (onnxruntime's ``enable_profiling``, OpenVINO's ``PERF_COUNT``): the ops that compute the
products (convolutions, GEMMs) and the rest, and ``ort_products_vs_openvino_run``, onnxruntime's product
kernels alone against OpenVINO's whole run (above 1: those kernels alone take longer than OpenVINO's run, so
no change around them can put onnxruntime ahead). Ends with one JSON line.
"""
import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ceiling import timed_with_ceiling
from common import SMOKE, archs, trained_like
from weights import recorded_model
from dcgan_deploy import cpu
from dcgan_deploy.checkpoint import save_generator
from dcgan_deploy.export import INT8_CALIBRATION_BATCH, INT8_CALIBRATION_SEEDS, deploy_form, export, to_onnx
from dcgan_deploy.images import compare_images
from dcgan_deploy.latent import latents
from dcgan_deploy.nets import ARCHITECTURES
from dcgan_deploy.runtime import Generator



def compiled_for(model, shape: list[int], threads: int, **config):
    """``model`` (an ov.Model) with a static input ``shape``, compiled for the CPU in fp32 on ``threads``."""
    import openvino as ov
    m = model.clone()
    m.reshape({m.inputs[0]: shape})
    return ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                                              **config})


TIMED = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}  # how OpenVINO is timed, and profiled


def openvino_peer(model, threads: int):
    """A ``bench_model`` peer running ``model`` (an ov.Model) compiled for each batch size, on the CPU."""
    def factory(gen, z):
        compiled = compiled_for(model, list(z.shape), threads, **TIMED)
        request = compiled.create_infer_request()
        request.infer({0: z})
        return (lambda: request.infer({0: z})), 1.0, 2
    return factory


def openvino_images(model, z: np.ndarray, threads: int) -> np.ndarray:
    return compiled_for(model, list(z.shape), threads)(z)[0]


def openvino_kernels(model, batch: int, threads: int) -> list[str]:
    """The kernels OpenVINO picked for the compute layers (e.g. ``brgconv_avx512_amx_I8``: AMX int8 tiles)."""
    compiled = compiled_for(model, [batch, model.inputs[0].get_partial_shape()[1].get_length()], threads)
    kinds = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "primitiveType" in info and info["layerType"].astype(str) in ("Convolution", "Deconvolution",
                                                                          "FullyConnected", "MatMul"):
            kinds.add(info["primitiveType"].astype(str))
    return sorted(kinds)


# The op types that compute products, as the runtimes' profiles name them after their fusions (onnxruntime's
# blocked-layout convolution is "Conv" too).
ORT_PRODUCTS = {"Conv", "FusedConv", "ConvTranspose", "QLinearConv", "ConvInteger", "Gemm", "FusedGemm", "QGemm",
                "MatMul", "FusedMatMul", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
OPENVINO_PRODUCTS = {"Convolution", "GroupConvolution", "Deconvolution", "ConvolutionBackpropData",
                     "GroupConvolutionBackpropData", "FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul"}


def ort_op_times(path: Path, z: np.ndarray, threads: int, seconds: float, tmp: Path) -> dict:
    """onnxruntime's kernel time per run (ms) by op type after its fusions, from its own profile."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling, opts.profile_file_prefix = True, str(tmp / "ort-profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: z}
    for _ in range(3):
        session.run(None, feeds)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = [e for e in json.loads(trace.read_text())
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    trace.unlink()
    runs = max(collections.Counter(e["name"] for e in events).values())
    times = collections.Counter()
    for e in events:
        times[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return dict(times)


def openvino_op_times(model, z: np.ndarray, threads: int, seconds: float) -> dict:
    """OpenVINO's time per run (ms) by layer type, from its PERF_COUNT profile (the median run's)."""
    request = compiled_for(model, list(z.shape), threads, **TIMED, PERF_COUNT=True).create_infer_request()
    runs, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(runs) < 5:
        request.infer({0: z})
        times = collections.Counter()
        for p in request.profiling_info:
            times[p.node_type] += p.real_time.total_seconds() * 1e3
        runs.append(dict(times))
    return sorted(runs, key=lambda t: sum(t.values()))[len(runs) // 2]


def time_split(times: dict, products: set) -> dict:
    """{op: ms} -> the products' ms, the rest's ms, and the three slowest other ops."""
    rest = {k: v for k, v in times.items() if k not in products}
    return {"products_ms": round(sum(v for k, v in times.items() if k in products), 3),
            "rest_ms": round(sum(rest.values()), 3),
            "slowest_rest": {k: round(v, 3) for k, v in sorted(rest.items(), key=lambda kv: -kv[1])[:3]}}


def nncf_int8(fp32: Path, cfg):
    """OpenVINO's int8 of a float32 file: NNCF post-training quantization on the export's calibration latents."""
    import nncf
    import openvino as ov
    items = [latents(INT8_CALIBRATION_BATCH, s, cfg.latent_dim, cfg.latent_prior) for s in INT8_CALIBRATION_SEEDS]
    model = ov.Core().read_model(str(fp32))
    return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))  # items: batches of latents


def measure(arch: str, tmp: Path, args) -> list[dict]:
    import openvino as ov
    g = (recorded_model("mnist")
         if arch == "mnist-dcgan" and not args.smoke else trained_like(arch, args.smoke))
    ckpt = tmp / f"{arch}.safetensors"
    save_generator(g.state_dict(), g.cfg, ckpt)
    fp32 = tmp / f"{arch}.onnx"
    export(ckpt, fp32, int8=True)
    int8 = tmp / f"{arch}-int8.onnx"
    form = tmp / f"{arch}-int8-form.onnx"  # what export --int8 quantizes, in float32, without the split
    to_onnx(deploy_form(g, int8=True), g.cfg, form)
    ov_fp32 = ov.Core().read_model(str(fp32))
    ov_int8 = nncf_int8(form, g.cfg)
    gen = Generator.load(fp32, device="cpu", threads=args.threads)
    z = gen.latents(256, 0)
    reference = gen.run(z)
    psnr = {"ort_int8": compare_images(reference, Generator.load(int8, device="cpu").run(z))["psnr"],
            "ov_fp32": compare_images(reference, openvino_images(ov_fp32, z, args.threads))["psnr"],
            "ov_int8": compare_images(reference, openvino_images(ov_int8, z, args.threads))["psnr"]}
    rows = []
    for precision, path, ov_model in (("fp32", fp32, ov_fp32), ("int8", int8, ov_int8)):
        kernels = openvino_kernels(ov_model, max(args.batch_sizes), args.threads)
        for batch in args.batch_sizes:
            r = timed_with_ceiling(path, args.threads, [batch], args.seconds, g if precision == "fp32" else None,
                                   rounds=args.rounds, peers={"openvino": openvino_peer(ov_model, args.threads)})[0]
            rows.append({"arch": arch, "precision": precision, "batch": batch, "ort_images_per_s": r["images_per_s"],
                         "openvino_images_per_s": r["openvino_images_per_s"], "ort_vs_openvino": r["speedup_vs_openvino"],
                         "ort_vs_openvino_range": r["speedup_vs_openvino_range"],
                         "share_of_ceiling": r.get("share_of_ceiling"), "speedup_vs_torch": r.get("speedup_vs_torch"),
                         "psnr_ort_db": round(psnr["ort_int8"], 1) if precision == "int8" else None,
                         "psnr_openvino_db": round(psnr["ov_int8" if precision == "int8" else "ov_fp32"], 1),
                         "openvino_kernels": kernels})
            if args.profile:
                z = gen.latents(batch, 0)
                ort_split = time_split(ort_op_times(path, z, args.threads, args.seconds, tmp), ORT_PRODUCTS)
                ov_split = time_split(openvino_op_times(ov_model, z, args.threads, args.seconds), OPENVINO_PRODUCTS)
                openvino_run_ms = batch / r["openvino_images_per_s"] * 1e3
                rows[-1]["profile"] = {"onnxruntime": ort_split, "openvino": ov_split,
                                       "openvino_run_ms": round(openvino_run_ms, 3),
                                       "ort_products_vs_openvino_run": round(ort_split["products_ms"] / openvino_run_ms, 3)}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--batch-size", default="1,64")
    ap.add_argument("--arch", action="append", choices=ARCHITECTURES, help="only these architectures (repeatable)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile both runtimes per op: the product kernels' time against the rest")
    ap.add_argument("--smoke", action="store_true", help="one tiny architecture, one short round: checks the script")
    args = ap.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_size.split(",")]
    if args.smoke:
        args.seconds, args.rounds, args.runs, args.batch_sizes = 0.02, 1, 1, [2]
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        sys.exit("needs openvino and nncf: pip install openvino nncf")
    warnings.simplefilter("ignore")
    rows = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            for arch in archs(("dcgan64",) if args.smoke else args.arch or ARCHITECTURES, args.smoke):
                for row in measure(arch, Path(tmp), args):
                    row["run"] = run
                    rows.append(row)
                    print(f"run {run} {row['arch']:<17} {row['precision']} batch {row['batch']:>3}: onnxruntime "
                          f"{row['ort_images_per_s']:9.1f} img/s, OpenVINO {row['openvino_images_per_s']:9.1f} img/s, "
                          f"ort/ov x{row['ort_vs_openvino']:.2f} (rounds {row['ort_vs_openvino_range']}); PSNR vs fp32 "
                          f"ort {row['psnr_ort_db']} ov {row['psnr_openvino_db']} dB; OpenVINO's kernels "
                          f"{','.join(row['openvino_kernels'])}", flush=True)
                    if "profile" in row:
                        p = row["profile"]
                        print(f"      profile: onnxruntime products {p['onnxruntime']['products_ms']} ms + rest "
                              f"{p['onnxruntime']['rest_ms']} ms {p['onnxruntime']['slowest_rest']}; OpenVINO products "
                              f"{p['openvino']['products_ms']} ms + rest {p['openvino']['rest_ms']} ms, its run "
                              f"{p['openvino_run_ms']} ms; onnxruntime's products / OpenVINO's run "
                              f"x{p['ort_products_vs_openvino_run']}", flush=True)
    cells = {}
    for r in rows:
        cells.setdefault((r["arch"], r["precision"], r["batch"]), []).append(r["ort_vs_openvino"])
    summary = {f"{a} {p} b{b}": {"median": statistics.median(v), "min": min(v), "max": max(v)}
               for (a, p, b), v in cells.items()}
    print(json.dumps({"cpu": cpu.features(), "threads": args.threads, "smoke": args.smoke, "tiny": SMOKE if args.smoke else None,
                      "summary": summary, "rows": rows}))


if __name__ == "__main__":
    main()
