"""What the generation benchmarks share: their command-line options and stand-in generators."""
import argparse
from pathlib import Path

import torch

from dcgan_deploy.bench import bench_model
from dcgan_deploy.export import Described, base_metadata, to_onnx, write_metadata
from dcgan_deploy.nets import Generator, NetConfig
from dcgan_deploy.parity import run_gate
from dcgan_deploy.train import recompute_bn_stats


def speed_args(doc: str, compile: bool = False) -> argparse.Namespace:
    """--threads, --batch-size, --seconds and --rounds, as every generation benchmark takes them
    (``compile``: and --compile, torch.compile beside PyTorch eager)."""
    ap = argparse.ArgumentParser(description=doc)
    if compile:
        ap.add_argument("--compile", action="store_true", help="also time torch.compile of each generator")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds (onnxruntime, PyTorch eager, the ceiling) the seconds are split into")
    return ap.parse_args()


def trained_like(arch: str) -> Generator:
    """A default-width generator with random weights and realistic BatchNorm statistics (speed does
    not depend on the values)."""
    torch.manual_seed(0)
    g = Generator(NetConfig.for_arch(arch))
    recompute_bn_stats(g, batches=2)
    return g.eval()


def gate_and_time(original: Generator, form: torch.nn.Module, path: Path, args: argparse.Namespace,
                  eager: bool = False) -> tuple[dict, dict]:
    """Export ``form`` (an exact rewrite of ``original``) to ``path``, run the parity gate against
    ``original``, and time it on the CPU (``eager``: beside ``original`` in PyTorch): (gate report, bench row)."""
    to_onnx(form, original.cfg, path)
    write_metadata(path, base_metadata(Described(original, original.cfg, original.cfg.arch), 18))
    gate = run_gate(original, path, seeds=(0,), batch_sizes=(1, 7))
    return gate, bench_model(path, "cpu", [args.batch_size], args.threads, args.seconds, original if eager else None,
                             rounds=args.rounds)[0]
