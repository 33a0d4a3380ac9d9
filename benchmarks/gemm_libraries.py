"""How fast is onnxruntime's own float32 matrix product next to the ceiling's?

    python benchmarks/gemm_libraries.py [--threads 2] [--seconds 0.3] [--rounds 6]

The ceiling of `dcgan-deploy bench` is a 1024x1024 float32 `torch.mm`. This times, in
alternating rounds with the same threads, that product beside the same product through
numpy's BLAS and through onnxruntime (one Gemm node, its weight a constant as in an
export: onnxruntime's MLAS kernels, weights prepacked), and the MLP generator's GEMM shapes
at batch 64 (M = 64 rows) through onnxruntime. Each figure is the median over the rounds;
"vs torch.mm" the median of the per-round ratios. It separates what the shapes cost from
what the library reaches on any shape.
"""
import argparse
import json
import statistics

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from dcgan_deploy.bench import in_rounds


def ort_gemm(m: int, k: int, n: int, threads: int):
    """One Gemm ``[m, k] @ W[n, k]^T`` in onnxruntime, W a constant: (callable, FLOPs)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              [numpy_helper.from_array(w, "W")])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
                                   so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((m, k), dtype=np.float32)
    return (lambda: session.run(None, {"x": x})), 2 * m * k * n


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.3, help="timed per runner per round")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    an, bn = a.numpy().copy(), b.numpy().copy()
    runners = {"torch.mm 1024x1024x1024 (the ceiling)": ((lambda: torch.mm(a, b)), 2 * 1024 ** 3),
               "numpy matmul 1024x1024x1024": ((lambda: an @ bn), 2 * 1024 ** 3),
               "onnxruntime Gemm 1024x1024x1024": ort_gemm(1024, 1024, 1024, args.threads)}
    for k, n in ((100, 256), (256, 512), (512, 1024), (1024, 784)):  # the MLP generator's layers
        runners[f"onnxruntime Gemm 64x{k}x{n} (MLP)"] = ort_gemm(64, k, n, args.threads)
    _, medians = in_rounds({name: (fn, args.seconds, 5) for name, (fn, _) in runners.items()}, args.rounds)
    rates = {name: [flops / t / 1e9 for t in medians[name]] for name, (_, flops) in runners.items()}
    ref = rates["torch.mm 1024x1024x1024 (the ceiling)"]
    print(f"threads {args.threads}; torch {torch.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    for name, r in rates.items():
        ratio = statistics.median(x / y for x, y in zip(r, ref))
        print(f"{name:<42} {statistics.median(r):7.1f} GFLOP/s   vs torch.mm {ratio:.2f}")
    print(json.dumps({"threads": args.threads, "gflops": {name: statistics.median(r) for name, r in rates.items()}}))


if __name__ == "__main__":
    main()
