"""The CPU a figure was measured on: its name and the instruction sets onnxruntime's kernels pick from.

onnxruntime chooses its matrix kernels by instruction set, so a speed (and, for a file that is not
portable, an int8 image) depends on the CPU's class, not only on its name. ``features()`` reads them from
the kernel's CPU flags (Linux) and says which are there and which are not, as every figure should:
``"AVX2, FMA; no AVX-512, VNNI, AMX"``.
"""
from __future__ import annotations

import platform
from pathlib import Path

# (label, Linux /proc/cpuinfo flags any of which give it); the x86 sets the kernels dispatch on, in order
X86 = (("AVX2", ("avx2",)), ("FMA", ("fma",)), ("AVX-512", ("avx512f",)), ("AVX-512BW", ("avx512bw",)),
       ("VNNI", ("avx512_vnni", "avx_vnni")), ("AVX512-BF16", ("avx512_bf16",)), ("AMX", ("amx_int8", "amx_tile")))
ARM = (("NEON", ("asimd", "neon")), ("dot product", ("asimddp",)), ("i8mm", ("i8mm",)), ("SVE", ("sve",)))
# what "no ..." lists when it is missing (the sets that decide the int8 and fp32 kernel paths)
KEY = {"x86_64": ("AVX2", "FMA", "AVX-512", "VNNI", "AMX"), "aarch64": ("NEON", "dot product", "i8mm")}


def cpuinfo() -> list[str]:
    """The lines of ``/proc/cpuinfo`` (none where the system has no such file)."""
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def name(lines: list[str] | None = None) -> str:
    """The CPU's model name (``AMD EPYC 7B13``), or the machine type where the system does not say.
    ``lines``: cpuinfo's lines (default: this machine's)."""
    for line in cpuinfo() if lines is None else lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def features(lines: list[str] | None = None, machine: str | None = None) -> dict:
    """``{"name", "machine", "has": [...], "lacks": [...], "summary", "int8_kernel"}``; ``has``/``lacks``
    are empty where the system does not list its CPU flags. ``lines`` and ``machine``: another CPU's
    cpuinfo lines and machine type (default: this machine's)."""
    lines = cpuinfo() if lines is None else lines
    machine = (machine or platform.machine()).lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    flags = set()
    for line in lines:
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    table = X86 if machine == "x86_64" else ARM if machine == "aarch64" else ()
    has = [label for label, names in table if flags & set(names)]
    lacks = [label for label in KEY.get(machine, ()) if label not in has]
    if not flags:
        summary = f"{machine}: instruction sets not listed by this system"
    else:
        summary = ", ".join(has) or "none of " + ", ".join(label for label, _ in table)
        if lacks:
            summary += "; no " + ", ".join(lacks)
    return {"name": name(lines), "machine": machine, "has": has, "lacks": lacks, "summary": summary,
            "int8_kernel": _int8_kernel(machine, has, bool(flags))}


def _int8_kernel(machine: str, has: list[str], listed: bool) -> str:
    """How onnxruntime multiplies uint8 by int8 here: where its sums can saturate, and where not."""
    if machine != "x86_64" or not listed:
        return "32-bit sums"
    if "AMX" in has or "VNNI" in has:
        return "32-bit sums (VNNI/AMX)"
    if "AVX2" in has:
        return "16-bit pair sums (vpmaddubsw, saturating)"
    return "32-bit sums (SSE)"
