"""Training throughput: images/s per architecture (one D step + one G step per batch).

    python benchmarks/train_throughput.py [--batch-size 64] [--steps 20] [--device cpu]

Synthetic data at each architecture's own size, full default widths, after 3 warm-up
steps; prints one line per architecture and a JSON summary.
"""
import argparse
import json
import platform
import tempfile
import time

import torch

from dcgan_deploy.nets import ARCHITECTURES
from dcgan_deploy.train import TrainConfig, Trainer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rows = []
    for arch in ARCHITECTURES:
        cfg = TrainConfig(arch=arch, data=f"synthetic:{args.batch_size * 4}", steps=10**6, batch_size=args.batch_size,
                          device=args.device, net={"channels": 3} if arch == "dcgan64" else {})
        with tempfile.TemporaryDirectory() as tmp:
            t = Trainer(cfg, tmp, progress=False)
            for _ in range(3):
                t.train_step()
            start = time.perf_counter()
            for _ in range(args.steps):
                t.train_step()
            elapsed = time.perf_counter() - start
        rate = args.steps * args.batch_size / elapsed
        rows.append({"arch": arch, "img_per_s": round(rate, 1), "ms_per_step": round(1000 * elapsed / args.steps, 1)})
        print(f"{arch:<18} {rate:8.1f} img/s  {1000 * elapsed / args.steps:7.1f} ms/step")
    print(json.dumps({"device": args.device, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "results": rows}))


if __name__ == "__main__":
    main()
