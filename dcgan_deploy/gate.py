"""The parity gate's one definition (numpy only): the limits an exported file must meet against its
reference on each backend, the verdict on one comparison, and the error a missed gate raises.

Used by ``export`` and ``verify`` (onnxruntime against PyTorch, ``parity``) and by the browser gate
(onnxruntime-web against the Python runtime and PyTorch, ``web``): one set of limits, so a float32 file
that passes on the CPU is held to the same bounds in the browser.

- float32 on a CPU-class backend (onnxruntime's CPU provider, wasm, WebGPU): max abs error ≤ 1e-4 in
  [-1, 1], and at most 0.1% of uint8 pixels changed (the cross-backend contract, ``docs/DESIGN.md``).
- float32 on CUDA: max abs error ≤ 2e-3 (TF32 convolutions), at most 0.1% of uint8 pixels changed.
- fp16 and int8 variants: PSNR ≥ 40 dB and ≥ 30 dB against PyTorch's fp32, every value finite.
- an int8 file against the Python runtime on another backend: the same values, every one (``int8.report``
  proves it from the file: integer sums that cannot saturate, every other op exactly rounded or a lookup).
"""
from __future__ import annotations

from dataclasses import dataclass

CUDA_BACKENDS = ("CUDAExecutionProvider",)


class GateError(RuntimeError):
    """A file missed its parity gate; ``report`` holds the numbers. Nothing was written."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass
class Thresholds:
    """Pass limits. ``changed``: the share of uint8 pixels allowed to differ."""

    cpu_max_abs: float = 1e-4
    cuda_max_abs: float = 2e-3  # TF32 convolutions on Ampere and newer
    cpu_changed: float = 1e-3
    cuda_changed: float = 1e-3
    fp16_min_psnr: float = 40.0
    int8_min_psnr: float = 30.0

    def max_abs(self, backend: str) -> float:
        return self.cuda_max_abs if backend in CUDA_BACKENDS else self.cpu_max_abs

    def changed(self, backend: str) -> float:
        return self.cuda_changed if backend in CUDA_BACKENDS else self.cpu_changed

    def min_psnr(self, precision: str | None) -> float | None:
        """The PSNR bar of a reduced-precision variant (``None`` for float32: max abs error decides)."""
        return {"fp16": self.fp16_min_psnr, "int8": self.int8_min_psnr}.get(precision or "")


def misses(m: dict, backend: str, t: Thresholds, min_psnr: float | None = None, exact: bool = False) -> list[str]:
    """Why comparison ``m`` (``images.compare_images``) misses the gate on ``backend``; empty when it passes.
    ``min_psnr``: a reduced-precision variant's gate (PSNR and finiteness). ``exact``: not one value may change
    (an int8 file against the Python runtime: ``int8.report`` proves its values the same everywhere)."""
    out = []
    if not m["finite"]:
        out.append("non-finite output (NaN or Inf)")
    if min_psnr is not None:
        if m["psnr"] < min_psnr:
            out.append(f"PSNR {m['psnr']:.1f} dB < {min_psnr:g} dB")
        return out
    limit = 0.0 if exact else t.max_abs(backend)
    if m["max_abs"] > limit:
        out.append(f"max abs error {m['max_abs']:.3g} > {limit:g}")
    changed = 0.0 if exact else t.changed(backend)
    if m["changed"] > changed:
        out.append(f"{m['changed']:.3%} of uint8 pixels changed > {changed:.3%}")
    return out


def worst(checks: list[dict]) -> dict:
    """The worst of each measure over a gate's checks."""
    return {"max_abs": max(c["max_abs"] for c in checks), "mean_abs": max(c["mean_abs"] for c in checks),
            "psnr": min(c["psnr"] for c in checks), "changed": max(c["changed"] for c in checks)}
