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

from dcgan_deploy import bench
from dcgan_deploy.checkpoint import save_generator
from dcgan_deploy.export import export
from dcgan_deploy.nets import ARCHITECTURES

from common import speed_args, trained_like


def main():
    args = speed_args(__doc__, compile=True)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHITECTURES:
            g = trained_like(arch)
            ckpt = Path(tmp) / f"{arch}.safetensors"
            save_generator(g.state_dict(), g.cfg, ckpt)
            export(ckpt, Path(tmp) / f"{arch}.onnx")
            row = bench.bench_model(Path(tmp) / f"{arch}.onnx", "cpu", [args.batch_size], args.threads, args.seconds,
                                    g, rounds=args.rounds, compile=args.compile)[0]
            rows.append(row)
    ceiling = bench.ceiling_summary(rows, args.threads)
    import onnxruntime
    result = {"onnxruntime": onnxruntime.__version__,
              "torch": torch.__version__, "threads": args.threads, "ceiling": ceiling, "cpu": bench._cpu_name(),
              "rows": rows}
    print(bench.format_table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
