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

from .runtime import Generator, _first_line, _open_session


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


def _product(threads: int, size: int = 1024):
    """The ceiling's workload: a ``size``-square float32 matrix product with ``threads`` threads, through
    torch when installed, else numpy. (callable, backend, FLOPs per call)."""
    backend = _backend()
    if backend.startswith("torch"):
        import torch
        torch.set_num_threads(threads)
        a, b = torch.randn(size, size), torch.randn(size, size)
        return (lambda: torch.mm(a, b)), backend, 2 * size ** 3
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    return (lambda: a @ a), backend, 2 * size ** 3


def _backend() -> str:
    try:
        import torch
        return f"torch {torch.__version__} mm"
    except ImportError:
        return "numpy matmul (BLAS threads as configured)"


def matmul_ceiling(threads: int, size: int = 1024, seconds: float = 1.0) -> dict:
    """Float32 matrix-product rate (GFLOP/s) alone: the median and the best of repeated products over
    ``seconds`` (at least 10) after two warm-up products (a cold core can run the first at half speed)."""
    run, backend, flops = _product(threads, size)
    run(), run()
    times = _repeat(run, seconds, 10)
    return {"backend": backend, "size": size, "gflops": flops / float(np.median(times)) / 1e9,
            "best_gflops": flops / min(times) / 1e9}


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _repeat(fn, seconds: float, at_least: int) -> list[float]:
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < at_least:
        times.append(_timed(fn))
    return times


def in_rounds(runners: dict, rounds: int) -> tuple[dict, dict]:
    """Time ``runners`` ({name: (callable, seconds, at least n calls)}) in ``rounds`` alternating
    rounds, each re-warmed at the start of its turn (the previous runner's threads may still hold a
    core): ({name: every single time}, {name: its median time in each round})."""
    times = {k: [] for k in runners}
    medians = {k: [] for k in runners}
    for _ in range(rounds):
        for k, (fn, budget, at_least) in runners.items():
            _repeat(fn, budget / 4, 2)
            t = _repeat(fn, budget, at_least)
            times[k] += t
            medians[k].append(float(np.median(t)))
    return times, medians


def _eager(model, z: np.ndarray, threads: int, device: str = "cpu"):
    """PyTorch on the same latents, on ``device`` (the onnxruntime session's), warmed up (for a
    compiled model the first call compiles): a callable for one batch, which waits for the GPU, and
    the seconds of that first call."""
    import torch
    torch.set_num_threads(threads)
    x = torch.from_numpy(z)
    sync = None
    if device == "cuda":
        model, x, sync = model.to("cuda"), x.to("cuda"), torch.cuda.synchronize

    def run():
        with torch.inference_mode():
            model(x)
        if sync:
            sync()
    return run, _timed(run)


def _compiled(model, z: np.ndarray, threads: int, device: str = "cpu") -> tuple:
    """``torch.compile`` (inductor, shapes fixed) of ``model``, warmed up on ``z``: (callable, compile
    seconds, None), or (None, None, why) where it does not work here (no C++ compiler, say)."""
    import torch
    try:
        run, seconds = _eager(torch.compile(model.to(device), dynamic=False), z, threads, device)
    except Exception as e:  # noqa: BLE001 -- any failure to compile is reported in the row, not raised
        return None, None, _why(e)
    return run, seconds, None


def _why(e: Exception) -> str:
    """An exception in one line, for a row: what failed, not a traceback."""
    return f"{type(e).__name__}: {_first_line(e)[:200]}" if str(e).strip() else type(e).__name__


def _bound(gen: Generator, z: np.ndarray, session=None) -> tuple:
    """IO binding: ``z`` and an image buffer placed once in the memory of the session's device and
    bound to ``session`` (default: ``gen``'s), so a run copies nothing to or from the host:
    (callable for one batch, which waits for the outputs; the bound image ``OrtValue``)."""
    import onnxruntime as ort
    session = session or gen.session
    where = gen.device
    latents = ort.OrtValue.ortvalue_from_numpy(z, where, 0)
    image = ort.OrtValue.ortvalue_from_shape_and_type([len(z), gen.channels, gen.height, gen.width], np.float32,
                                                      where, 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input("z", latents)
    binding.bind_ortvalue_output("image", image)

    def run(_keep=(latents, image)):
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return run, image


def _graphed(gen: Generator, z: np.ndarray, threads: int) -> tuple:
    """A session of ``gen``'s model with the CUDA provider's graph capture on, bound like ``_bound``
    (one session per batch size: a captured graph has fixed shapes and buffer addresses): its first
    runs capture the graph, later ones replay it. (callable, the bound image ``OrtValue``)."""
    run, image = _bound(gen, z, _open_session(gen.path, "cuda", threads, {"enable_cuda_graph": "1"}))
    run(), run()
    return run, image


def bench_model(model, device: str, batch_sizes, threads: int, seconds: float = 2.0, torch_model=None,
                rounds: int = 5, ceiling: bool = True, compile: bool = False, bound: bool = False,
                cuda_graph: bool = False) -> list[dict]:
    """One row per batch size for ``model``.

    The time is spent in ``rounds`` alternating rounds: onnxruntime, then PyTorch eager
    (``torch_model``; with ``compile`` also ``torch.compile`` of it, compiled per batch size), then
    the matrix-product ceiling (on the CPU, when the graph's multiply-adds can be counted and
    ``ceiling``), so all of them see the same state of the machine; a VM whose speed drifts by
    10-30% within seconds would otherwise tilt every ratio. images/s and the latency percentiles
    come from all of onnxruntime's runs; ``speedup_vs_torch`` (``_vs_compiled``) and
    ``share_of_ceiling`` are the medians of the per-round ratios of median times (like against
    like), and ``share_of_best_ceiling`` sets the median GFLOP/s against the fastest single product
    seen: the stricter reading.

    ``bound`` adds onnxruntime with IO binding (latents and images stay in the device's memory),
    ``cuda_graph`` the same replayed as a CUDA graph (CUDA only), both timed in the same rounds:
    ``bound_vs_run`` / ``graph_vs_run`` are their per-round speedups over plain ``run`` (which
    copies latents in and images out), ``..._vs_torch`` over PyTorch; a model that cannot be
    captured gets ``graph_error`` in its row. With the model on CUDA, PyTorch runs on the GPU too."""
    start = time.perf_counter()
    gen = Generator.load(model, device=device, threads=threads)
    created = time.perf_counter() - start
    if cuda_graph and gen.device != "cuda":
        raise ValueError(f"CUDA graphs need the CUDA provider, and {Path(gen.path).name} runs on the CPU here "
                         "(use --device cuda with onnxruntime-gpu)")
    if torch_model is not None and gen.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError("the model runs on CUDA but this PyTorch has no CUDA: it cannot be compared on the "
                             "same device (leave out --ckpt, or install a CUDA build of torch)")
    macs = count_macs(gen.path)
    # the ceiling is a CPU product: a share of it means nothing for a model running on the GPU
    product = _product(threads) if macs is not None and ceiling and gen.device == "cpu" else None
    if product:
        product[0](), product[0]()
    rows = []
    for batch in batch_sizes:
        z = gen.latents(batch, 0)
        first = _timed(lambda: gen.run(z))
        runners = {"ort": (lambda: gen.run(z), seconds / rounds, 5 // rounds + 1)}
        if bound:
            runners["bound"] = (_bound(gen, z)[0], seconds / rounds, 2)
        extra = {}
        if cuda_graph:
            try:
                runners["graph"] = (_graphed(gen, z, threads)[0], seconds / rounds, 2)
            except Exception as e:  # noqa: BLE001 -- a graph that cannot be captured is reported in the row
                extra["graph_error"] = _why(e)
        if torch_model is not None:
            runners["torch"] = (_eager(torch_model, z, threads, gen.device)[0], seconds / rounds, 2)
            if compile:
                run, compile_s, why = _compiled(torch_model, z, threads, gen.device)
                if run:
                    runners["compiled"] = (run, seconds / rounds, 2)
                    extra["compile_s"] = round(compile_s, 2)
                else:
                    extra["compile_error"] = why
        if product:
            runners["ceiling"] = (product[0], seconds / rounds / 2, 3)
        times, medians = in_rounds(runners, rounds)
        t = np.array(times["ort"])
        row = {"model": Path(gen.path).stem, "architecture": gen.metadata["architecture"], "provider": gen.provider,
               "threads": threads, "batch": batch, "session_s": round(created, 4), "first_run_s": round(first, 4),
               "images_per_s": round(batch / np.median(t), 1),
               "p50_ms": round(1e3 * np.percentile(t, 50), 3), "p95_ms": round(1e3 * np.percentile(t, 95), 3),
               "p99_ms": round(1e3 * np.percentile(t, 99), 3), "rounds": rounds}
        row.update(summarize_rounds(medians, times, batch, macs, product[2] if product else None), **extra)
        rows.append(row)
    return rows


def summarize_rounds(medians: dict, times: dict, batch: int, macs: int | None, ceiling_flops: float | None) -> dict:
    """The figures of ``bench_model`` that compare: ``medians`` holds each runner's median time per
    round ("ort", and "torch", "ceiling" if measured), ``times`` all their single times."""
    out = {}
    ort = np.array(medians["ort"])
    if macs is not None:
        out["gflops"] = _sig(2 * macs * batch / np.median(times["ort"]) / 1e9)

    def ratio(key: str, slower: str, faster: str, range_key: str) -> None:
        r = np.array(medians[slower]) / np.array(medians[faster])
        out[key] = round(float(np.median(r)), 2)
        out[range_key] = [round(float(r.min()), 2), round(float(r.max()), 2)]
    for name in ("torch", "compiled", "bound", "graph"):
        if name in medians:
            out[f"{name}_images_per_s"] = round(batch / float(np.median(times[name])), 1)
    for name, range_key in (("torch", "speedup_range"), ("compiled", "speedup_vs_compiled_range")):
        if name in medians:
            ratio(f"speedup_vs_{name}", name, "ort", range_key)
    for name in ("bound", "graph"):
        if name in medians:
            ratio(f"{name}_vs_run", "ort", name, f"{name}_vs_run_range")
            if "torch" in medians:
                ratio(f"{name}_vs_torch", "torch", name, f"{name}_vs_torch_range")
    if "ceiling" in medians and macs is not None:
        ceil = ceiling_flops / np.array(medians["ceiling"]) / 1e9
        shares = 2 * macs * batch / ort / 1e9 / ceil
        best = ceiling_flops / min(times["ceiling"]) / 1e9
        out.update({"ceiling_gflops": _sig(float(np.median(ceil))), "ceiling_best_gflops": _sig(best),
                    "share_of_ceiling": _sig(float(np.median(shares))),
                    "share_range": [_sig(float(shares.min())), _sig(float(shares.max()))],
                    "share_of_best_ceiling": _sig(out["gflops"] / best)})
    return out


def run(models, device: str = "auto", batch_sizes=(1, 8, 64, 256), threads: int | None = None,
        seconds: float = 2.0, ckpt=None, compile: bool = False, bound: bool = False, cuda_graph: bool = False) -> dict:
    """The whole benchmark as plain data."""
    import onnxruntime as ort
    threads = threads or os.cpu_count() or 1
    torch_model = None
    if ckpt:
        from .export import describe
        torch_model = describe(ckpt).model
    rows = [r for m in models for r in bench_model(m, device, batch_sizes, threads, seconds, torch_model,
                                                    compile=compile, bound=bound, cuda_graph=cuda_graph)]
    return {"onnxruntime": ort.__version__, "numpy": np.__version__, "threads": threads,
            "ceiling": ceiling_summary(rows, threads), "cpu": _cpu_name(), "rows": rows}


def ceiling_summary(rows: list[dict], threads: int) -> dict:
    """The ceiling as the rows measured it: the range of their per-row medians and the best product.
    Measured alone when no row could count its multiply-adds."""
    measured = [r for r in rows if "ceiling_gflops" in r and "ceiling_best_gflops" in r]
    per_row = [r["ceiling_gflops"] for r in measured]
    if not per_row:
        c = matmul_ceiling(threads)
        return {**c, "gflops": _sig(c["gflops"]), "best_gflops": _sig(c["best_gflops"]), "range": [_sig(c["gflops"])] * 2}
    return {"backend": _backend(), "size": 1024, "gflops": _sig(float(np.median(per_row))),
            "best_gflops": max(r["ceiling_best_gflops"] for r in measured),
            "range": [min(per_row), max(per_row)]}


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
    has_torch = any("torch_images_per_s" in r for r in result["rows"])
    has_compiled = any("compiled_images_per_s" in r for r in result["rows"])
    modes = [m for m in ("bound", "graph") if any(f"{m}_images_per_s" in r for r in result["rows"])]
    lines = [f"cpu: {result['cpu']}; threads: {result['threads']}; onnxruntime {result['onnxruntime']}; "
             f"ceiling ({c['backend']}, {c['size']}x{c['size']} float32, measured in each row's rounds): "
             f"median {c['gflops']:.1f} GFLOP/s (rows {c['range'][0]:.1f}-{c['range'][1]:.1f}), best product "
             f"{c['best_gflops']:.1f}",
             f"{'model':<14}{'batch':>6}{'session_s':>10}{'first_s':>9}{'img/s':>11}{'p50_ms':>9}{'p95_ms':>9}"
             f"{'p99_ms':>9}{'GFLOP/s':>9}{'ceil%':>7}{'best%':>7}" + (f"{'torch':>11}{'x':>6}" if has_torch else "")
             + (f"{'compiled':>11}{'x':>6}" if has_compiled else "")
             + "".join(f"{m:>11}{'x run':>6}" for m in modes)]
    nan = float("nan")
    for r in result["rows"]:
        line = (f"{r['model']:<14}{r['batch']:>6}{r['session_s']:>10.3f}{r['first_run_s']:>9.4f}{r['images_per_s']:>11.1f}"
                f"{r['p50_ms']:>9.3f}{r['p95_ms']:>9.3f}{r['p99_ms']:>9.3f}{r.get('gflops', nan):>9.1f}"
                f"{100 * r.get('share_of_ceiling', nan):>6.0f}%{100 * r.get('share_of_best_ceiling', nan):>6.0f}%")
        if "torch_images_per_s" in r:
            line += f"{r['torch_images_per_s']:>11.1f}{r['speedup_vs_torch']:>6.2f}"
        if "compiled_images_per_s" in r:
            line += f"{r['compiled_images_per_s']:>11.1f}{r['speedup_vs_compiled']:>6.2f}"
        elif has_compiled:
            line += f"{'':>17}"
        for m in modes:
            line += f"{r[f'{m}_images_per_s']:>11.1f}{r[f'{m}_vs_run']:>6.2f}" if f"{m}_vs_run" in r else f"{'':>17}"
        if "compile_error" in r:
            line += f"  torch.compile failed: {r['compile_error']}"
        if "graph_error" in r:
            line += f"  CUDA graph failed: {r['graph_error']}"
        lines.append(line)
    lines.append("ceil%: median over the rounds of GFLOP/s / the ceiling's median in the same round; best%: median "
                 "GFLOP/s / the fastest product" + ("; x: median over the rounds of PyTorch's time / onnxruntime's"
                                                     if has_torch else "")
                 + ("; bound: IO binding, latents and images in the device's memory; graph: the same replayed as a "
                    "CUDA graph; x run: their speedup over a plain run (which copies to and from the host)"
                    if modes else ""))
    return "\n".join(lines)
