"""onnxruntime vs PyTorch eager for every architecture, side by side, at default widths.

    python benchmarks/generate_speed.py [--threads 2] [--batch-size 64] [--seconds 3] [--compile]

Each generator gets random weights with realistic BatchNorm statistics (speed does not
depend on the values), is exported through the parity gate, then timed with
`dcgan_deploy.bench` against the matrix-product ceiling and PyTorch eager (and, with
--compile, torch.compile), in alternating rounds.
"""
import json
import tempfile
from pathlib import Path

import torch

from dcgan_deploy import cpu
from dcgan_deploy.bench import format_table
from dcgan_deploy.checkpoint import save_generator
from dcgan_deploy.export import export
from dcgan_deploy.nets import ARCHITECTURES

from ceiling import COLUMNS, ceiling_summary, timed_with_ceiling
from common import archs, speed_args, trained_like


def main():
    args = speed_args(__doc__, compile=True)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs(ARCHITECTURES, args.smoke):
            g = trained_like(arch, args.smoke)
            ckpt = Path(tmp) / f"{arch}.safetensors"
            save_generator(g.state_dict(), g.cfg, ckpt)
            export(ckpt, Path(tmp) / f"{arch}.onnx")
            row = timed_with_ceiling(Path(tmp) / f"{arch}.onnx", args.threads, [args.batch_size], args.seconds,
                                     g, rounds=args.rounds, compile=args.compile)[0]
            rows.append(row)
    ceiling = ceiling_summary(rows, args.threads)
    import onnxruntime
    result = {"onnxruntime": onnxruntime.__version__,
              "torch": torch.__version__, "threads": args.threads, "ceiling": ceiling, "cpu": cpu.name(), "cpu_features": cpu.features(),
              "rows": rows}
    print(f"ceiling ({ceiling['backend']}, {ceiling['size']}x{ceiling['size']} float32, measured in each row's rounds): "
          f"median {ceiling['gflops']:.1f} GFLOP/s (rows {ceiling['range'][0]:.1f}-{ceiling['range'][1]:.1f}), best "
          f"product {ceiling['best_gflops']:.1f}")
    print(format_table(result, COLUMNS))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
