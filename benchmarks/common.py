"""What the generation benchmarks share: their command-line options and stand-in generators."""
import argparse

import torch

from dcgan_deploy.nets import Generator, NetConfig
from dcgan_deploy.train import recompute_bn_stats


def speed_args(doc: str) -> argparse.Namespace:
    """--threads, --batch-size and --seconds, as every generation benchmark takes them."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    return ap.parse_args()


def trained_like(arch: str) -> Generator:
    """A default-width generator with random weights and realistic BatchNorm statistics (speed does
    not depend on the values)."""
    torch.manual_seed(0)
    g = Generator(NetConfig.for_arch(arch))
    recompute_bn_stats(g, batches=2)
    return g.eval()
