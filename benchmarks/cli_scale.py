"""Whole-process figures for the CLI: cold start, and scaling from 10^4 to 10^5 images.

    python benchmarks/cli_scale.py [--repeats 5] [--small 10000] [--large 100000]

- Cold start: `dcgan-deploy generate -n 64 -o grid.png` on the bundled model against a
  bare script that imports onnxruntime, creates the session and runs one batch of 64
  (median wall time of --repeats runs each, interleaved).
- Scale: `generate -n SMALL -o x.npy` against `-n LARGE`, wall time and peak resident
  memory (ru_maxrss of the child process), for .npy and for a folder of PNGs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = """
import numpy as np, onnxruntime as ort
from dcgan_deploy.bundled import bundled_models
s = ort.InferenceSession(str(bundled_models()["mnist"]), providers=["CPUExecutionProvider"])
s.run(None, {"z": np.random.default_rng(0).standard_normal((64, 100), dtype=np.float32)})
"""


def run(cmd, cwd):
    """Wall seconds and peak RSS (MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-500:]}")
    return elapsed, usage.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--outputs", default="npy,png_folder", help="which scale runs: npy, png_folder")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "dcgan_deploy", "generate"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        bare, full = [], []
        for _ in range(args.repeats):
            bare.append(run([sys.executable, "-c", BARE], tmp)[0])
            full.append(run(cli + ["-n", "64", "--seed", "0", "-o", "grid.png"], tmp)[0])
        out["cold_start"] = {"bare_script_s": statistics.median(bare), "generate_s": statistics.median(full),
                             "ratio": statistics.median(full) / statistics.median(bare)}
        print(f"cold start: generate -n 64 {out['cold_start']['generate_s']:.3f}s, bare onnxruntime script "
              f"{out['cold_start']['bare_script_s']:.3f}s, ratio {out['cold_start']['ratio']:.2f}")
        for kind, target in (("npy", "x.npy"), ("png_folder", "pngs/")):
            if kind not in args.outputs.split(","):
                continue
            small = run(cli + ["-n", str(args.small), "--seed", "0", "-o", target], tmp)
            Path(tmp, target).unlink() if kind == "npy" else subprocess.run(["rm", "-rf", str(Path(tmp, target))])
            large = run(cli + ["-n", str(args.large), "--seed", "0", "-o", target], tmp)
            subprocess.run(["rm", "-rf", str(Path(tmp, target))])
            out[kind] = {"small_n": args.small, "large_n": args.large, "small_s": small[0], "large_s": large[0],
                         "time_ratio": large[0] / small[0], "small_rss_mib": small[1], "large_rss_mib": large[1],
                         "rss_ratio": large[1] / small[1]}
            r = out[kind]
            print(f"{kind}: {args.small} in {small[0]:.2f}s ({small[1]:.0f} MiB), {args.large} in {large[0]:.2f}s "
                  f"({large[1]:.0f} MiB): time x{r['time_ratio']:.2f}, memory x{r['rss_ratio']:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
