"""The matrix-product ceiling: how close to the hardware's float32 rate does a generator run?

Multiply-adds are counted from the exported graph's shapes (``count_macs``); the ceiling is
a ``size``-square float32 matrix product (torch's when installed, else numpy's) timed as a
peer in ``dcgan_deploy.bench``'s alternating rounds, so the model and the product see the
same state of the machine. ``ceiling_figures`` turns a row's rounds into GFLOP/s and its
share of the ceiling: ``share_of_ceiling`` is the median of the per-round ratios (like
against like), ``share_of_best_ceiling`` sets the median GFLOP/s against the fastest single
product (the stricter reading). Used by ``generate_speed.py`` and the form studies.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dcgan_deploy.bench import time_repeatedly


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _placement(w: np.ndarray | None, out_axis: int) -> bool:
    """A constant weight that only moves values: 0/1 entries, at most one 1 per output unit, so each
    output is one input or zero (a placement MatMul, the export's one-hot shift convolutions).
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
    times = time_repeatedly(run, seconds, 10)
    return {"backend": backend, "size": size, "gflops": flops / float(np.median(times)) / 1e9,
            "best_gflops": flops / min(times) / 1e9}


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




def ceiling_peer(threads: int, size: int = 1024) -> dict:
    """The ceiling as a ``bench_model`` peer: {"ceiling": factory}, the product warmed up once."""
    run, _, _ = _product(threads, size)
    run(), run()
    return {"ceiling": lambda gen, z: (run, 0.5, 3)}


def ceiling_figures(row: dict, macs: int | None, threads: int, size: int = 1024) -> dict:
    """GFLOP/s of a ``bench_model`` row with a "ceiling" peer, and its shares of the ceiling."""
    if macs is None or "ceiling" not in row["rounds_ms"]:
        return {}
    flops = 2 * size ** 3
    batch = row["batch"]
    ort = np.array(row["rounds_ms"]["ort"]) / 1e3
    ceil = flops / (np.array(row["rounds_ms"]["ceiling"]) / 1e3) / 1e9
    gflops = 2 * macs * batch / (row["p50_ms"] / 1e3) / 1e9
    shares = 2 * macs * batch / ort / 1e9 / ceil
    best = flops / (row["best_ms"]["ceiling"] / 1e3) / 1e9
    return {"gflops": _sig(gflops), "ceiling_gflops": _sig(float(np.median(ceil))), "ceiling_best_gflops": _sig(best),
            "share_of_ceiling": _sig(float(np.median(shares))),
            "share_range": [_sig(float(shares.min())), _sig(float(shares.max()))],
            "share_of_best_ceiling": _sig(gflops / best)}


COLUMNS = [("GFLOP/s", "gflops", ">9.1f"), ("ceil%", "share_of_ceiling", ">9.0%"), ("best%", "share_of_best_ceiling", ">9.0%")]


def timed_with_ceiling(path, threads: int, batch_sizes, seconds: float, torch_model=None, rounds: int = 5,
                       compile: bool = False, peers: dict | None = None) -> list[dict]:
    """``bench_model`` on the CPU with the ceiling among the peers, each row with its ceiling figures."""
    from dcgan_deploy.bench import bench_model
    from dcgan_deploy.nets import TorchRunners
    torch_model = TorchRunners(torch_model) if torch_model is not None else None
    rows = bench_model(path, "cpu", batch_sizes, threads, seconds, torch_model, rounds=rounds, compile=compile,
                       peers={**ceiling_peer(threads), **(peers or {})})
    macs = count_macs(path)
    for row in rows:
        row.update(ceiling_figures(row, macs, threads))
    return rows
