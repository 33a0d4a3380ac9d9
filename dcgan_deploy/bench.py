"""Generation speed on the user's machine (numpy + onnxruntime; torch only to time PyTorch beside it).

For each model and batch size: session creation time, first-run time, images/s and
latency p50/p95/p99 after warm-up; optionally PyTorch eager and ``torch.compile`` of the
same generator, and on a GPU the device-resident modes (IO binding, CUDA graphs), all
timed in alternating rounds so that every runner sees the same state of the machine.
Measurement studies (the matrix-product ceiling, other runtimes, export forms) add their
own runners through ``peers``; they live in ``benchmarks/``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from . import cpu
from .runtime import Generator, check_threads, first_line
from .session import OrtSession

MAX_SECONDS = 600.0
MAX_BENCH_BATCH = 1 << 20


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_repeatedly(fn, seconds: float, at_least: int) -> list[float]:
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < at_least:
        times.append(timed(fn))
    return times


def in_rounds(runners: dict, rounds: int) -> tuple[dict, dict]:
    """Time ``runners`` ({name: (callable, seconds, at least n calls)}) in ``rounds`` alternating
    rounds, each re-warmed at the start of its turn (the previous runner's threads may still hold a
    core): ({name: every single time}, {name: its median time in each round})."""
    times = {k: [] for k in runners}
    medians = {k: [] for k in runners}
    for _ in range(rounds):
        for k, (fn, budget, at_least) in runners.items():
            time_repeatedly(fn, budget / 4, 2)
            t = time_repeatedly(fn, budget, at_least)
            times[k] += t
            medians[k].append(float(np.median(t)))
    return times, medians


def why(e: Exception) -> str:
    """An exception in one line, for a row: what failed, not a traceback."""
    return f"{type(e).__name__}: {first_line(e)[:200]}" if str(e).strip() else type(e).__name__


def bound_run(gen: Generator, z: np.ndarray, session=None) -> tuple:
    """IO binding: ``z`` and an image buffer placed once in the memory of the session's device and
    bound to ``session`` (default: ``gen``'s), so a run copies nothing to or from the host:
    (callable for one batch, which waits for the outputs; the bound image ``OrtValue``)."""
    import onnxruntime as ort
    if session is None:
        if not isinstance(gen.session, OrtSession):
            raise ValueError(f"IO binding is onnxruntime's; this model runs on {gen.session.engine}")
        session = gen.session.ort
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


def graphed_run(gen: Generator, z: np.ndarray, threads: int) -> tuple:
    """A session of ``gen``'s model with the CUDA provider's graph capture on, bound like ``bound_run``
    (one session per batch size: a captured graph has fixed shapes and buffer addresses): its first
    runs capture the graph, later ones replay it. (callable, the bound image ``OrtValue``)."""
    run, image = bound_run(gen, z, OrtSession.open(gen.path, "cuda", threads, {"enable_cuda_graph": "1"}).ort)
    run(), run()
    return run, image


def bench_model(model, device: str, batch_sizes, threads: int, seconds: float = 2.0, torch_model=None,
                rounds: int = 5, compile: bool = False, bound: bool = False, cuda_graph: bool = False,
                peers: dict | None = None) -> list[dict]:
    """One row per batch size for ``model``.

    The time is spent in ``rounds`` alternating rounds: onnxruntime, then PyTorch eager
    (``torch_model``; with ``compile`` also ``torch.compile`` of it, compiled per batch size), then
    each of ``peers``, so all of them see the same state of the machine; a VM whose speed drifts by
    10-30% within seconds would otherwise tilt every ratio. images/s and the latency percentiles
    come from all of onnxruntime's runs; ``speedup_vs_torch`` (``_vs_compiled``, ``_vs_<peer>``) are
    the medians of the per-round ratios of median times (like against like).

    ``bound`` adds onnxruntime with IO binding (latents and images stay in the device's memory),
    ``cuda_graph`` the same replayed as a CUDA graph (CUDA only), both timed in the same rounds:
    ``bound_vs_run`` / ``graph_vs_run`` are their per-round speedups over plain ``run`` (which
    copies latents in and images out), ``..._vs_torch`` over PyTorch; a model that cannot be
    captured gets ``graph_error`` in its row. With the model on CUDA, PyTorch runs on the GPU too.

    ``torch_model``: PyTorch's side, an object with ``eager(z, threads, device)`` -> (callable, first-call
    seconds), ``compiled(...)`` -> (callable or None, compile seconds, why not) and ``check_device(device)``
    (``nets.TorchRunners``: this module never imports torch). ``peers``: {name: factory(gen, z) ->
    (callable for one batch, share of ``seconds``, at least n calls)} for runners a study adds (its
    per-round medians are in the row's ``rounds_ms``)."""
    start = time.perf_counter()
    gen = Generator.load(model, device=device, threads=threads)
    created = time.perf_counter() - start
    if cuda_graph and gen.device != "cuda":
        raise ValueError(f"CUDA graphs need the CUDA provider, and {Path(gen.path).name} runs on the CPU here "
                         "(use --device cuda with onnxruntime-gpu)")
    if torch_model is not None:
        torch_model.check_device(gen.device)
    rows = []
    for batch in batch_sizes:
        z = gen.latents(batch, 0)
        first = timed(lambda: gen.run(z))
        runners = {"ort": (lambda: gen.run(z), seconds / rounds, 5 // rounds + 1)}
        if bound:
            runners["bound"] = (bound_run(gen, z)[0], seconds / rounds, 2)
        extra = {}
        if cuda_graph:
            try:
                runners["graph"] = (graphed_run(gen, z, threads)[0], seconds / rounds, 2)
            except Exception as e:  # noqa: BLE001 -- a graph that cannot be captured is reported in the row
                extra["graph_error"] = why(e)
        if torch_model is not None:
            runners["torch"] = (torch_model.eager(z, threads, gen.device)[0], seconds / rounds, 2)
            if compile:
                run, compile_s, reason = torch_model.compiled(z, threads, gen.device)
                if run:
                    runners["compiled"] = (run, seconds / rounds, 2)
                    extra["compile_s"] = round(compile_s, 2)
                else:
                    extra["compile_error"] = reason
        for name, factory in (peers or {}).items():
            fn, share, at_least = factory(gen, z)
            runners[name] = (fn, seconds * share / rounds, at_least)
        times, medians = in_rounds(runners, rounds)
        t = np.array(times["ort"])
        row = {"model": Path(gen.path).stem, "architecture": gen.metadata["architecture"], "provider": gen.provider,
               "threads": threads, "batch": batch, "session_s": round(created, 4), "first_run_s": round(first, 4),
               "images_per_s": round(batch / np.median(t), 1),
               "p50_ms": round(1e3 * np.percentile(t, 50), 3), "p95_ms": round(1e3 * np.percentile(t, 95), 3),
               "p99_ms": round(1e3 * np.percentile(t, 99), 3), "rounds": rounds,
               "rounds_ms": {k: [round(1e3 * v, 4) for v in m] for k, m in medians.items()},
               "best_ms": {k: round(1e3 * min(v), 4) for k, v in times.items()}}
        row.update(summarize_rounds(medians, times, batch, list(peers or ())), **extra)
        rows.append(row)
    return rows


def summarize_rounds(medians: dict, times: dict, batch: int, peers: list[str] = ()) -> dict:
    """The figures of ``bench_model`` that compare: ``medians`` holds each runner's median time per
    round ("ort", and "torch", "compiled", "bound", "graph" and peers if measured), ``times`` all their
    single times."""
    out = {}

    def ratio(key: str, slower: str, faster: str, range_key: str) -> None:
        r = np.array(medians[slower]) / np.array(medians[faster])
        out[key] = round(float(np.median(r)), 2)
        out[range_key] = [round(float(r.min()), 2), round(float(r.max()), 2)]
    for name in ("torch", "compiled", "bound", "graph", *peers):
        if name in medians:
            out[f"{name}_images_per_s"] = round(batch / float(np.median(times[name])), 1)
    for name, range_key in (("torch", "speedup_range"), ("compiled", "speedup_vs_compiled_range"),
                            *((p, f"speedup_vs_{p}_range") for p in peers)):
        if name in medians:
            ratio(f"speedup_vs_{name}", name, "ort", range_key)
    for name in ("bound", "graph"):
        if name in medians:
            ratio(f"{name}_vs_run", "ort", name, f"{name}_vs_run_range")
            if "torch" in medians:
                ratio(f"{name}_vs_torch", "torch", name, f"{name}_vs_torch_range")
    return out


def check_options(models, device: str, batch_sizes: str, threads, seconds, ckpt, compile: bool,
                  cuda_graph: bool) -> dict:
    """The command line's options, checked, as ``measure``'s keyword arguments (the CLI loads ``ckpt``)."""
    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        raise ValueError(f"--batch-size must be comma-separated integers, got {batch_sizes!r}") from None
    if not sizes or not all(1 <= b <= MAX_BENCH_BATCH for b in sizes):
        raise ValueError(f"batch sizes must be from 1 to {MAX_BENCH_BATCH}, got {batch_sizes}")
    if not (isinstance(seconds, (int, float)) and 0.01 <= seconds <= MAX_SECONDS):  # NaN fails too
        raise ValueError(f"--seconds must be from 0.01 to {MAX_SECONDS:g}, got {seconds}")
    if ckpt and len(models) > 1:
        raise ValueError("--ckpt compares one model with its checkpoint; give one -m")
    if compile and not ckpt:
        raise ValueError("--compile compiles the PyTorch generator: give its checkpoint with --ckpt")
    if cuda_graph and device == "cpu":
        raise ValueError("--cuda-graph needs --device cuda (or auto with onnxruntime-gpu)")
    return {"models": list(models) or [None], "device": device, "batch_sizes": sizes,
            "threads": None if threads is None else check_threads(threads), "seconds": float(seconds),
            "compile": compile, "cuda_graph": cuda_graph}


def measure(models, device: str = "auto", batch_sizes=(1, 8, 64, 256), threads: int | None = None,
            seconds: float = 2.0, torch_model=None, compile: bool = False, bound: bool = False,
            cuda_graph: bool = False, peers: dict | None = None) -> dict:
    """The whole benchmark as plain data; ``torch_model``: the PyTorch generator to time beside (one model)."""
    import onnxruntime as ort
    threads = threads or os.cpu_count() or 1
    rows = [r for m in models for r in bench_model(m, device, batch_sizes, threads, seconds, torch_model,
                                                    compile=compile, bound=bound, cuda_graph=cuda_graph,
                                                    peers=peers)]
    return {"onnxruntime": ort.__version__, "numpy": np.__version__, "threads": threads, "cpu": cpu.name(),
            "cpu_features": cpu.features(), "rows": rows}


def format_table(result: dict, columns: list[tuple[str, str, str]] = ()) -> str:
    """The rows as a table; ``columns``: extra (header, row key, format) a study adds."""
    rows = result["rows"]
    has_torch = any("torch_images_per_s" in r for r in rows)
    has_compiled = any("compiled_images_per_s" in r for r in rows)
    modes = [m for m in ("bound", "graph") if any(f"{m}_images_per_s" in r for r in rows)]
    features = result.get("cpu_features", {}).get("summary")
    lines = [f"cpu: {result['cpu']}" + (f" ({features})" if features else "")
             + f"; threads: {result['threads']}; onnxruntime {result['onnxruntime']}",
             f"{'model':<14}{'batch':>6}{'session_s':>10}{'first_s':>9}{'img/s':>11}{'p50_ms':>9}{'p95_ms':>9}"
             f"{'p99_ms':>9}" + "".join(f"{h:>9}" for h, _, _ in columns)
             + (f"{'torch':>11}{'x':>6}" if has_torch else "")
             + (f"{'compiled':>11}{'x':>6}" if has_compiled else "")
             + "".join(f"{m:>11}{'x run':>6}" for m in modes)]
    nan = float("nan")
    for r in rows:
        line = (f"{r['model']:<14}{r['batch']:>6}{r['session_s']:>10.3f}{r['first_run_s']:>9.4f}{r['images_per_s']:>11.1f}"
                f"{r['p50_ms']:>9.3f}{r['p95_ms']:>9.3f}{r['p99_ms']:>9.3f}"
                + "".join(format(r.get(key, nan), fmt) for _, key, fmt in columns))
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
    notes = []
    if has_torch:
        notes.append("x: median over the alternating rounds of PyTorch's time / onnxruntime's")
    if modes:
        notes.append("bound: IO binding, latents and images in the device's memory; graph: the same replayed as a "
                     "CUDA graph; x run: their speedup over a plain run (which copies to and from the host)")
    return "\n".join(lines + (["; ".join(notes)] if notes else []))
