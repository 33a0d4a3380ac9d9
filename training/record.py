"""Copy a finished run's record into training/<name>/ and draw its loss curve.

    python training/record.py runs/mnist-dcgan training/mnist [--no-weights] [--real DATA]

Copies config.json, log.jsonl, generator.safetensors (unless --no-weights) and the
sample grids, and writes losses.png (d_loss and g_loss against step, smoothed over 50
log points; where a run was resumed, the re-run steps count once). ``--real DATA``
also writes real-sample.png: 64 of the run's training images (seed 0), in the grid
the sample grids use, to put beside them.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def smooth(values, k=50):
    values = np.asarray(values, np.float64)
    if len(values) < k:
        return values
    kernel = np.ones(k) / k
    return np.convolve(values, kernel, mode="valid")


def step_rows(log: Path) -> list[dict]:
    """The per-step rows of ``log.jsonl`` in step order, each step once: a resumed run logs
    the steps after its last checkpoint twice, and the later entry wins."""
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    by_step = {r["step"]: r for r in rows if "d_loss" in r and "done" not in r}
    return [by_step[s] for s in sorted(by_step)]


def loss_curve(log: Path, dest: Path, width=640, height=320, pad=40):
    rows = step_rows(log)
    steps = np.array([r["step"] for r in rows])
    curves = {"d_loss": (smooth([r["d_loss"] for r in rows]), (200, 40, 40)),
              "g_loss": (smooth([r["g_loss"] for r in rows]), (40, 90, 200))}
    top = max(c.max() for c, _ in curves.values()) * 1.1
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    draw.rectangle([pad, pad // 2, width - pad // 2, height - pad], outline="black")
    for i, (name, (values, colour)) in enumerate(curves.items()):
        s = steps[len(steps) - len(values):]
        xs = pad + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (width - 1.5 * pad)
        ys = height - pad - values / top * (height - 1.5 * pad)
        draw.line(list(zip(xs, ys)), fill=colour, width=2)
        draw.text((pad + 10 + 90 * i, pad // 2 + 5), name, fill=colour)
    draw.text((pad, height - pad + 5), f"step {steps[0]}", fill="black")
    draw.text((width - 3 * pad, height - pad + 5), f"step {steps[-1]}", fill="black")
    draw.text((2, pad // 2), f"{top:.2f}", fill="black")
    draw.text((2, height - pad - 10), "0", fill="black")
    im.save(dest)


def real_sample(data: str, config: dict, dest: Path, n: int = 64) -> None:
    """``n`` training images of ``data`` (seed 0) as one grid, like the trainer's sample grids."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dcgan_deploy.data import load_dataset
    from dcgan_deploy.images import grid
    from dcgan_deploy.nets import NetConfig
    net = NetConfig.for_arch(config["arch"], **config.get("net", {}))
    images = load_dataset(data, net.channels, net.image_size).training.images
    pick = np.random.default_rng(0).choice(len(images), n, replace=False)
    Image.fromarray(grid(images[np.sort(pick)].transpose(0, 2, 3, 1)).squeeze()).save(dest)


def main(run: Path, out: Path, weights: bool = True, real: str | None = None):
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "log.jsonl") + (("generator.safetensors",) if weights else ()):
        shutil.copy2(run / name, out / name)
    (out / "samples").mkdir(exist_ok=True)
    for png in sorted((run / "samples").glob("*.png")):
        shutil.copy2(png, out / "samples" / png.name)
    loss_curve(run / "log.jsonl", out / "losses.png")
    if real:
        real_sample(real, json.loads((run / "config.json").read_text()), out / "real-sample.png")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--no-weights", action="store_true")
    ap.add_argument("--real", help="the run's data: also write real-sample.png")
    args = ap.parse_args()
    main(args.run, args.out, weights=not args.no_weights, real=args.real)
