"""Write ziggurat.mjs: the tables of the float32 ziggurat for the standard normal that numpy's
``standard_normal(dtype=np.float32)`` draws with, derived here from the method's definition.

    python dcgan_deploy/js/make_ziggurat.py     # rewrites dcgan_deploy/js/ziggurat.mjs

Marsaglia & Tsang's ziggurat ("The Ziggurat Method for Generating Random Variables", 2000) with 256
layers of equal area v = 4.92867323399e-3 under f(x) = exp(-x^2 / 2), the base layer's edge at
r = 3.6541528853610088. Layer edges x_255 = r, x_{i-1} = sqrt(-2 ln(v / x_i + f(x_i))); x_0 = v / f(r)
(the base layer's width with its tail). For a 23-bit magnitude: w_i = x_i / 2^23, f_i = f(x_i)
(f_0 = 1), k_i = round(2^23 x_{i-1} / x_i) (k_0 = round(2^23 r / x_0), k_1 = 0). Computed with 60
significant digits, then rounded once to float32. tests/test_web.py checks that the JavaScript
draws equal numpy's, bit for bit.
"""
from decimal import ROUND_HALF_EVEN, Decimal, getcontext
from pathlib import Path

import numpy as np

getcontext().prec = 60
R = Decimal("3.6541528853610087963519472518")
V = Decimal("0.00492867323399")


def tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = lambda x: (-(x * x) / 2).exp()  # noqa: E731
    edges = [R]
    for _ in range(254):
        edges.append((-2 * (V / edges[-1] + f(edges[-1])).ln()).sqrt())
    x = [V / f(R)] + edges[::-1]  # x[0]: the base layer; x[1] innermost ... x[255] = r
    two23 = Decimal(2 ** 23)
    nearest = lambda d: int(d.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))  # noqa: E731
    ki = np.array([nearest(two23 * R / x[0]), 0] + [nearest(two23 * x[i - 1] / x[i]) for i in range(2, 256)], np.uint32)
    wi = np.array([float(v / two23) for v in x], np.float64).astype(np.float32)
    fi = np.array([1.0] + [float(f(v)) for v in x[1:]], np.float64).astype(np.float32)
    return ki, wi, fi


def source() -> str:
    ki, wi, fi = tables()
    words = lambda a: ",".join(f"0x{int(v):08x}" for v in a)  # noqa: E731
    r32, inv32 = np.float32(float(R)), np.float32(float(1 / R))
    return ("// The float32 ziggurat for the standard normal, as numpy's standard_normal(dtype=float32) draws it:\n"
            "// 256 layers (Marsaglia & Tsang 2000), tables as float32 bit patterns. Written by make_ziggurat.py.\n"
            f"export const KI = new Uint32Array([{words(ki)}]);\n"
            f"export const WI = new Float32Array(new Uint32Array([{words(wi.view(np.uint32))}]).buffer);\n"
            f"export const FI = new Float32Array(new Uint32Array([{words(fi.view(np.uint32))}]).buffer);\n"
            f"export const R = {float(r32)!r};  // r, a float32\n"
            f"export const INV_R = {float(inv32)!r};  // 1 / r, a float32\n")


if __name__ == "__main__":
    (Path(__file__).parent / "ziggurat.mjs").write_text(source())
