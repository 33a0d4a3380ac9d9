"""Generation benchmark: onnxruntime speed beside a measured float32 ceiling (and PyTorch, if given).

For each model and batch size: session creation time, first-run time, images/s,
latency p50/p95/p99 after warm-up, achieved GFLOP/s (multiply-adds counted from the
graph's shapes, 2 FLOPs each) and that as a share of a float32 matrix-product rate
measured in the same run with the same thread count.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .runtime import Generator


def _placement(w: np.ndarray | None, out_axis: int) -> bool:
    """A constant weight that only moves values: 0/1 entries, at most one 1 per output unit, so each
    output is one input or zero (the export's interleaving MatMuls and one-hot shift convolutions).
    Not arithmetic: not counted."""
    if w is None or w.size == 0 or not np.isin(w, (0, 1)).all():
        return False
    per_output = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1).sum(1)
    return bool((per_output <= 1).all())


def count_macs(path: str | Path) -> int | None:
    """Multiply-adds of one image through the graph (Conv, ConvTranspose, Gemm, MatMul); needs ``onnx``.

    Nodes whose constant weight only places values (``_placement``) do no arithmetic and count 0."""
    try:
        import onnx
        from onnx import numpy_helper, shape_inference
    except ImportError:
        return None
    model = onnx.load(str(path))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1  # one image
    model = shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    shapes.update({name: list(v.shape) for name, v in consts.items()})
    macs = 0
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "MatMul") and _placement(consts.get(node.input[1]), 0 if node.op_type == "Conv" else -1):
            continue
        if node.op_type == "Conv":
            w, out = shapes[node.input[1]], shapes[node.output[0]]      # w [Cout, Cin/g, kh, kw]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            x, w = shapes[node.input[0]], shapes[node.input[1]]         # w [Cin, Cout/g, kh, kw]
            macs += int(np.prod(x)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            k = a[0] if attrs.get("transA") else a[-1]
            n = b[0] if attrs.get("transB") else b[-1]
            macs += int(np.prod(a)) // k * k * n
    return macs


def matmul_ceiling(threads: int, size: int = 1024, seconds: float = 1.0) -> dict:
    """Float32 matrix-product rate (GFLOP/s) with ``threads`` threads: torch when installed, else numpy.

    The best of repeated products over ``seconds`` (at least 10): a first product or two on a cold
    core can run at half speed, and a ceiling set too low would flatter every share of it."""
    try:
        import torch
        torch.set_num_threads(threads)
        a, b = torch.randn(size, size), torch.randn(size, size)
        run, backend = (lambda: torch.mm(a, b)), f"torch {torch.__version__} mm"
    except ImportError:
        a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        run, backend = (lambda: a @ a), "numpy matmul (BLAS threads as configured)"
    run()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 10:
        times.append(_timed(run))
    return {"backend": backend, "size": size, "gflops": 2 * size ** 3 / min(times) / 1e9}


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(model, device: str, batch_sizes, threads: int, seconds: float = 2.0,
                ceiling: float | None = None, torch_model=None) -> list[dict]:
    """One row per batch size for ``model``."""
    start = time.perf_counter()
    gen = Generator.load(model, device=device, threads=threads)
    created = time.perf_counter() - start
    macs = count_macs(gen.path)
    rows = []
    for batch in batch_sizes:
        z = gen.latents(batch, 0)
        first = _timed(lambda: gen.run(z))
        times = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            times.append(_timed(lambda: gen.run(z)))
        t = np.array(times)
        row = {"model": Path(gen.path).stem, "architecture": gen.metadata["architecture"], "provider": gen.provider,
               "threads": threads, "batch": batch, "session_s": round(created, 4), "first_run_s": round(first, 4),
               "images_per_s": round(batch / np.median(t), 1),
               "p50_ms": round(1e3 * np.percentile(t, 50), 3), "p95_ms": round(1e3 * np.percentile(t, 95), 3),
               "p99_ms": round(1e3 * np.percentile(t, 99), 3)}
        if macs is not None:
            row["gflops"] = _sig(2 * macs * batch / np.median(t) / 1e9)
            if ceiling:
                row["share_of_ceiling"] = _sig(row["gflops"] / ceiling)
        if torch_model is not None:
            row.update(torch_eager(torch_model, z, seconds, threads))
            row["speedup_vs_torch"] = round(row["images_per_s"] / row["torch_images_per_s"], 2)
        rows.append(row)
    return rows


def torch_eager(model, z: np.ndarray, seconds: float, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    x = torch.from_numpy(z)
    with torch.inference_mode():
        model(x)
        times = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            times.append(_timed(lambda: model(x)))
    return {"torch_images_per_s": round(len(z) / float(np.median(times)), 1)}


def run(models, device: str = "auto", batch_sizes=(1, 8, 64, 256), threads: int | None = None,
        seconds: float = 2.0, ckpt=None) -> dict:
    """The whole benchmark as plain data."""
    import onnxruntime as ort
    threads = threads or os.cpu_count() or 1
    ceiling = matmul_ceiling(threads)
    torch_model = None
    if ckpt:
        from .export import describe
        torch_model = describe(ckpt).model
    rows = [r for m in models for r in bench_model(m, device, batch_sizes, threads, seconds, None, torch_model)]
    ceiling = settle_ceiling(ceiling, rows, threads)
    return {"onnxruntime": ort.__version__, "numpy": np.__version__, "threads": threads, "ceiling": ceiling,
            "cpu": _cpu_name(), "rows": rows}


def settle_ceiling(before: dict, rows: list[dict], threads: int) -> dict:
    """Measure the ceiling again after the runs, keep the higher of the two (this VM's speed drifts
    within a run; the lower figure would flatter every share of it), and set each row's share."""
    after = matmul_ceiling(threads)
    ceiling = max(before, after, key=lambda c: c["gflops"])
    ceiling = {**ceiling, "measured_gflops": [round(before["gflops"], 1), round(after["gflops"], 1)]}
    for row in rows:
        if "gflops" in row:
            row["share_of_ceiling"] = _sig(row["gflops"] / ceiling["gflops"])
    return ceiling


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def format_table(result: dict) -> str:
    c = result["ceiling"]
    lines = [f"cpu: {result['cpu']}; threads: {result['threads']}; onnxruntime {result['onnxruntime']}; "
             f"ceiling: {c['gflops']:.1f} GFLOP/s ({c['backend']}, {c['size']}x{c['size']} float32"
             + (f"; before/after the runs {' / '.join(map(str, c['measured_gflops']))}" if "measured_gflops" in c else "")
             + ")",
             f"{'model':<14}{'batch':>6}{'session_s':>10}{'first_s':>9}{'img/s':>11}{'p50_ms':>9}{'p95_ms':>9}"
             f"{'p99_ms':>9}{'GFLOP/s':>9}{'ceil%':>7}" + (f"{'torch':>11}{'x':>6}" if any(
                 "torch_images_per_s" in r for r in result["rows"]) else "")]
    for r in result["rows"]:
        line = (f"{r['model']:<14}{r['batch']:>6}{r['session_s']:>10.3f}{r['first_run_s']:>9.4f}{r['images_per_s']:>11.1f}"
                f"{r['p50_ms']:>9.3f}{r['p95_ms']:>9.3f}{r['p99_ms']:>9.3f}{r.get('gflops', float('nan')):>9.1f}"
                f"{100 * r.get('share_of_ceiling', float('nan')):>6.0f}%")
        if "torch_images_per_s" in r:
            line += f"{r['torch_images_per_s']:>11.1f}{r['speedup_vs_torch']:>6.2f}"
        lines.append(line)
    return "\n".join(lines)
