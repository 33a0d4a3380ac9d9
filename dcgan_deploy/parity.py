"""The parity gate (torch + onnxruntime): does the ONNX file compute what PyTorch computes?
Its limits and verdicts are ``gate``'s, shared with the browser gate.

Compares PyTorch (fp32, eval) with onnxruntime on latents from the model's own prior,
several seeds and batch sizes, on every available provider, in image space. Also
checks batch invariance: each image is the same generated alone or inside a batch
(a graph that normalises with batch statistics fails this).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from . import int8
from .gate import Thresholds, misses, worst
from .checkpoint import open_checkpoint
from .evaluate import Extractor, compare_sets
from .images import compare_images
from .images import to_uint8
from .latent import latents, seed_labels
from .runtime import CPU, CUDA, Generator

SEEDS = (0, 1, 2)
BATCH_SIZES = (1, 7, 64)


def providers_to_check() -> list[str]:
    return [p for p in (CPU, CUDA) if p in ort.get_available_providers()]


@torch.no_grad()
def torch_images(model: torch.nn.Module, z: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
    args = (torch.from_numpy(z),) if label is None else (torch.from_numpy(z), torch.from_numpy(label))
    return model(*args).float().numpy()


def gate_labels(gen: Generator, n: int, seed: int) -> np.ndarray | None:
    """A conditional model's labels for the gate: the classes in turn (``latent.seed_labels``), so a batch
    of at least as many images as classes covers every class."""
    return seed_labels(n, seed, len(gen.classes)) if gen.classes else None


def run_gate(model: torch.nn.Module, onnx_path, thresholds: Thresholds | None = None,
             seeds=SEEDS, batch_sizes=BATCH_SIZES, providers: list[str] | None = None,
             min_psnr: float | None = None) -> dict:
    """Check ``onnx_path`` against ``model`` (a torch generator, used as it is) and return the report.

    ``min_psnr`` switches to the gate of a reduced-precision variant (fp16, int8): PSNR and
    finiteness instead of max abs error.
    """
    thresholds = thresholds or Thresholds()
    providers = providers or providers_to_check()
    checks, invariance, failures = [], [], []
    for provider in providers:
        gen = Generator.load(onnx_path, device="cuda" if provider == CUDA else "cpu")
        for seed in seeds:
            for batch in batch_sizes:
                z = latents(batch, seed, gen.latent_dim, gen.latent_prior)
                y = gate_labels(gen, batch, seed)
                m = compare_images(torch_images(model, z, y), gen.run(z, y))
                m.update(provider=provider, seed=seed, batch=batch)
                m["failed"] = misses(m, provider, thresholds, min_psnr)
                failures += [f"{provider} seed {seed} batch {batch}: {why}" for why in m["failed"]]
                checks.append(m)
        # Batch invariance: each image of the largest batch, generated alone.
        z = latents(max(batch_sizes), seeds[0], gen.latent_dim, gen.latent_prior)
        y = gate_labels(gen, len(z), seeds[0])
        batched = gen.run(z, y)
        alone = np.concatenate([gen.run(z[i:i + 1], None if y is None else y[i:i + 1]) for i in range(len(z))])
        inv = compare_images(batched, alone)
        limit = thresholds.max_abs(provider)
        inv.update(provider=provider, limit=limit, passed=inv["max_abs"] <= limit and inv["finite"])
        if not inv["passed"]:
            failures.append(f"{provider}: batch invariance: an image differs by {inv['max_abs']:.3g} "
                            f"generated alone vs in a batch of {len(z)} (limit {limit:g}); "
                            "does the graph normalise with batch statistics (train-mode BatchNorm)?")
        invariance.append(inv)
    return {
        "passed": not failures,
        "providers": providers,
        "seeds": list(seeds),
        "batch_sizes": list(batch_sizes),
        "thresholds": dataclasses.asdict(thresholds),
        "worst": worst(checks),
        "failures": failures,
        "checks": checks,
        "batch_invariance": invariance,
    }


def gate_summary(report: dict) -> dict:
    """The part of a report that goes into the model's metadata (no per-check rows)."""
    return {k: v for k, v in report.items() if k not in ("checks", "batch_invariance")}


def format_gate(report: dict) -> str:
    """A human-readable report: one line per provider/seed/batch, then the verdict."""
    lines = [f"{'provider':<22} {'seed':>4} {'batch':>5} {'max_abs':>10} {'mean_abs':>10} {'psnr_dB':>8} {'changed':>8}"]
    for c in report["checks"]:
        lines.append(f"{c['provider']:<22} {c['seed']:>4} {c['batch']:>5} {c['max_abs']:>10.3g} {c['mean_abs']:>10.3g} "
                     f"{c['psnr']:>8.1f} {c['changed']:>8.3%}" + ("  MISS" if c["failed"] else ""))
    for inv in report["batch_invariance"]:
        lines.append(f"{inv['provider']:<22} batch invariance max_abs {inv['max_abs']:.3g} "
                     f"(limit {inv['limit']:g}) {'ok' if inv['passed'] else 'MISS'}")
    sums = report.get("integer_sums")
    if sums:
        lines.append("int8: " + int8.summary(sums))
    lines += [f"note: {n}" for n in report.get("notes", [])]
    if report["passed"]:
        lines.append("parity: PASSED")
    else:
        lines.append("parity: FAILED")
        lines += [f"  - {f}" for f in report["failures"]]
    return "\n".join(lines)


def pytorch_reference(ckpt, arch: str | None = None):
    """A callable z -> PyTorch's float images for the checkpoint (the browser gate's second reference)."""
    model = open_checkpoint(ckpt, arch).model
    return lambda z, labels=None: torch_images(model, z, labels)


# ---- deployment drift in image-quality terms -------------------------------------------------
def drift(model: str | Path, ckpt: str | Path, n: int = 1000, seed: int = 0, features: str | Path | None = None,
          arch: str | None = None) -> dict:
    """The same metrics between PyTorch samples and ONNX samples for the same seeds (needs torch)."""
    gen = Generator.load(model, device="cpu")
    torch_model = open_checkpoint(ckpt, arch).model
    with torch.no_grad():
        torch_images = np.concatenate([to_uint8(torch_model(torch.from_numpy(z)).numpy())
                                       for z in np.array_split(gen.latents(n, seed), max(1, n // 256))])
    onnx_images = gen.generate(n, seed=seed)
    out = compare_sets(Extractor.load(features, (gen.channels, gen.height, gen.width)), onnx_images, torch_images, seed)
    out["uint8_pixels_changed"] = float(np.mean(onnx_images != torch_images))
    return out
