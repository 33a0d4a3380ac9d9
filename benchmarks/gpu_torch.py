"""What a CUDA GPU allows for these generators, measured through PyTorch.

    python benchmarks/gpu_torch.py [--batch-size 256,4096,16384,65536] [--seconds 1] [--json out.json]

For each architecture (the bundled default's own weights for mnist-dcgan, default-width
stand-ins with realistic BatchNorm statistics for the others) and batch size, images/s of:

- ``eager_fp32``: the eval-mode generator as trained (the "PyTorch eager" reference);
- ``fp32_graph``: BatchNorm folded, channels_last, replayed as one CUDA graph;
- ``fp16_graph``: the same in float16 (what the exported fp16 variant computes);
- ``+host``: the fp16 graph followed by the uint8 conversion on the GPU and the copy of the
  uint8 images into pinned host memory: what a caller that wants images on the host gets.

Latents are made on the GPU; times are CUDA-event times over whole batches after warm-up.
Beside them: the GPU's measured dense fp32 (TF32 off) and fp16 matrix-product rates, and
each mode's achieved TFLOP/s (multiply-adds counted from the exported graph, 2 FLOPs each).
This is the PyTorch side only; onnxruntime's CUDA provider needs the onnxruntime-gpu build.
"""
import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

from ceiling import count_macs
from dcgan_deploy.export import fold_batchnorm, to_onnx

from common import trained_like
from weights import recorded_model

ARCHS = ["mnist-dcgan", "mnist-dcgan-wide", "mnist-convt", "mnist-mlp", "dcgan64"]


def cuda_time(fn, seconds: float) -> float:
    """Median seconds of one call of ``fn`` (CUDA events), after a warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times, spent = [], 0.0
    while spent < seconds or len(times) < 5:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
        spent += times[-1]
    return sorted(times)[len(times) // 2]


def matmul_tflops(dtype: torch.dtype, size: int = 8192) -> float:
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    return 2 * size ** 3 / cuda_time(lambda: a @ b, 1.0) / 1e12


def graphed(fn):
    """``fn`` captured as one CUDA graph (its inputs and outputs are fixed buffers)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def bench_arch(arch: str, batches: list[int], seconds: float) -> list[dict]:
    if arch == "mnist-dcgan":
        g = recorded_model("mnist")
    else:
        g = trained_like(arch)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            to_onnx(fold_batchnorm(g), g.cfg, Path(tmp) / "g.onnx")
            macs = count_macs(Path(tmp) / "g.onnx")
        except Exception as e:  # the figures stand without it
            print(f"{arch}: no multiply-add count ({type(e).__name__}: {e})", file=sys.stderr)
            macs = None
    eager = copy.deepcopy(g).cuda().eval()
    fast32 = fold_batchnorm(g).cuda().eval().to(memory_format=torch.channels_last)
    fast16 = copy.deepcopy(fast32).half()
    rows = []
    for batch in batches:
        z32 = torch.randn(batch, g.cfg.latent_dim, device="cuda")
        z16 = z32.half()
        host = torch.empty((batch, g.cfg.image_size, g.cfg.image_size, g.cfg.channels), dtype=torch.uint8,
                           pin_memory=True)
        row = {"architecture": arch, "batch": batch}
        try:
            with torch.inference_mode():
                modes = {
                    "eager_fp32": lambda: eager(z32),
                    "fp32_graph": graphed(lambda: fast32(z32)),
                    "fp16_graph": graphed(lambda: fast16(z16)),
                }
                img16 = graphed(lambda: to_uint8(fast16(z16)))
                out = to_uint8(fast16(z16))  # the graph's output buffer has this shape
                modes["fp16_graph+host"] = lambda: (img16(), host.copy_(out, non_blocking=True))
                for name, fn in modes.items():
                    t = cuda_time(fn, seconds)
                    row[f"{name}_img_s"] = round(batch / t)
                    if macs:
                        row[f"{name}_tflops"] = round(2 * macs * batch / t / 1e12, 2)
        except torch.OutOfMemoryError:
            row["error"] = "out of GPU memory"
        row["graph16_vs_eager"] = round(row.get("fp16_graph_img_s", 0) / row.get("eager_fp32_img_s", 1), 2)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", default="256,4096,16384,65536")
    ap.add_argument("--arch", default=",".join(ARCHS))
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible to torch")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(),
              "matmul_fp32_tflops": round(matmul_tflops(torch.float32), 1),
              "matmul_fp16_tflops": round(matmul_tflops(torch.float16), 1)}
    print(json.dumps(result), file=sys.stderr, flush=True)
    batches = [int(b) for b in args.batch_size.split(",")]
    result["rows"] = [r for a in args.arch.split(",") for r in bench_arch(a, batches, args.seconds)]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    cols = ["eager_fp32", "fp32_graph", "fp16_graph", "fp16_graph+host"]
    print(f"{result['gpu']}, torch {result['torch']}; matmul fp32 {result['matmul_fp32_tflops']} TFLOP/s, "
          f"fp16 {result['matmul_fp16_tflops']} TFLOP/s\n")
    print("| architecture | batch | " + " | ".join(f"{c} img/s (TFLOP/s)" for c in cols) + " | fp16 graph / eager |")
    print("| --- | --- | " + " | ".join("---" for _ in cols) + " | --- |")
    for r in result["rows"]:
        cells = [f"{r[c + '_img_s']:,} ({r.get(c + '_tflops', '?')})" if c + "_img_s" in r else r.get("error", "")
                 for c in cols]
        print(f"| {r['architecture']} | {r['batch']} | " + " | ".join(cells) + f" | {r['graph16_vs_eager']} |")


if __name__ == "__main__":
    main()
