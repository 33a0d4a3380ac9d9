"""Training throughput: images/s per architecture (one D step + one G step per batch).

    python benchmarks/train_throughput.py [--batch-size 64] [--steps 20] [--device cpu]

Synthetic data at each architecture's own size, full default widths, after 3 warm-up
steps. Each architecture is timed twice, side by side: fp32 with the default memory
format, and bf16 autocast + channels_last (what `amp`/`channels_last` = "on" do), so
the trainer's "auto" defaults can follow the faster one. Prints one line per
architecture and a JSON summary.
"""
import argparse
import json
import tempfile
import time

import tomllib
from pathlib import Path

import torch

from dcgan_deploy import cpu
from dcgan_deploy.nets import ARCHITECTURES
from dcgan_deploy.train import TrainConfig, Trainer, cpu_has_amx

ROOT = Path(__file__).resolve().parent.parent


def cpu_bf16_units() -> dict:
    """The CPU's bf16 matrix units as torch sees them: AMX tiles, AVX512-BF16 dot products."""
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return {"amx": cpu_has_amx(), "avx512_bf16": bool(avx512_bf16 and avx512_bf16())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny nets, one step: checks that the script runs")
    args = ap.parse_args()
    rows = []
    tiny = {"g_width": 8, "d_width": 8} if args.smoke else {}
    recipes = {arch: {"arch": arch, "net": {"channels": 3} if arch == "dcgan64" else {}} for arch in ARCHITECTURES}
    folder = tomllib.loads((ROOT / "training" / "dcgan64-folder.toml").read_text())
    recipes["dcgan64-folder"] = {k: v for k, v in folder.items() if k not in ("data", "steps", "batch_size", "amp",
                                                                             "channels_last", "sample_every",
                                                                             "checkpoint_every", "log_every")}
    for name in list(recipes)[:1] if args.smoke else recipes:
        row = {"arch": name}
        for label, fast in (("fp32", "off"), ("bf16_channels_last", "on")):
            recipe = recipes[name]
            cfg = TrainConfig.of(**{**recipe, "net": {**recipe["net"], **tiny}}, data=f"synthetic:{args.batch_size * 4}",
                              steps=10**6, batch_size=args.batch_size, device=args.device, amp=fast, channels_last=fast)
            with tempfile.TemporaryDirectory() as tmp:
                t = Trainer(cfg, tmp, progress=False)
                for _ in range(3):
                    t.train_step()
                start = time.perf_counter()
                for _ in range(args.steps):
                    t.train_step()
                elapsed = time.perf_counter() - start
            row[f"{label}_img_per_s"] = round(args.steps * args.batch_size / elapsed, 1)
        rows.append(row)
        print(f"{name:<18} fp32 {row['fp32_img_per_s']:8.1f} img/s   bf16+channels_last "
              f"{row['bf16_channels_last_img_per_s']:8.1f} img/s")
    print(json.dumps({"device": args.device, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "cpu": cpu.name(), "cpu_features": cpu.features(),
                      "cpu_bf16": cpu_bf16_units(), "results": rows}))


if __name__ == "__main__":
    main()
