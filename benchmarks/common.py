"""What the generation benchmarks share: their command-line options and stand-in generators (the shipped
models' trained weights: ``weights.py``)."""
import argparse
from pathlib import Path

import torch

from dcgan_deploy.checkpoint import Checkpoint
from dcgan_deploy.export import base_metadata, to_onnx
from dcgan_deploy.modelfile import write_metadata
from dcgan_deploy.nets import GeneratorNet, NetConfig, recompute_bn_stats
from dcgan_deploy.parity import run_gate

from ceiling import timed_with_ceiling


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
    ap.add_argument("--smoke", action="store_true",
                    help="tiny generators, one short round: checks that the script runs (its figures mean nothing)")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds, args.batch_size = 0.02, 1, 2
    return args


SMOKE = {"g_width": 16, "d_width": 8}


def archs(names, smoke: bool) -> tuple:
    """The architectures a script measures: all of ``names``, or under --smoke the first."""
    return tuple(names)[:1] if smoke else tuple(names)


def trained_like(arch: str, smoke: bool = False) -> GeneratorNet:
    """A default-width generator with random weights and realistic BatchNorm statistics (speed does
    not depend on the values); ``smoke``: a tiny one."""
    torch.manual_seed(0)
    g = GeneratorNet(NetConfig.for_arch(arch, **(SMOKE if smoke else {})))
    recompute_bn_stats(g, batches=2)
    return g.eval()


def gate_and_time(original: GeneratorNet, form: torch.nn.Module, path: Path, args: argparse.Namespace,
                  eager: bool = False) -> tuple[dict, dict]:
    """Export ``form`` (an exact rewrite of ``original``) to ``path``, run the parity gate against
    ``original``, and time it on the CPU (``eager``: beside ``original`` in PyTorch): (gate report, bench row)."""
    to_onnx(form, original.cfg, path)
    write_metadata(path, base_metadata(Checkpoint(original, original.cfg, original.cfg.arch), 18))
    gate = run_gate(original, path, seeds=(0,), batch_sizes=(1, 7))
    return gate, timed_with_ceiling(path, args.threads, [args.batch_size], args.seconds, original if eager else None,
                                    rounds=args.rounds)[0]

