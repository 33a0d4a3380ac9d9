"""Whether an int8 graph's integer sums fit every CPU kernel's accumulators, read from the file alone.

onnxruntime runs a quantized Conv or Gemm as products of 8-bit activations (raw bytes 0..255: its
kernels shift int8 activations to uint8) and the file's 8-bit weights, summed in integers. Every
kernel path sums in 32 bits -- except one: x86 without VNNI (SSSE3, AVX2 and AVX-512BW kernels) uses
``vpmaddubsw``, which multiplies a uint8 by an int8 and adds *pairs* of products in 16 bits with
saturation. Where a pair can pass 32,767 the result depends on the instruction set: the same file and
seed give other bytes on an AVX2 CPU than on a VNNI one, in the browser or on ARM.

The bound here is structural: activations may be any byte, so a pair reaches at most
``2 * 255 * max|w|`` for int8 weights ``w`` -- the file's own constants. Weights within +-64 (7 bits,
what ``export --int8`` writes) keep every pair at or below 32,640. A uint8 weight has no 16-bit pair
path (its kernels widen both sides to 16 bits and sum in 32). Every whole dot product, plus its int32
bias, must also fit 32 bits: ``K * 255 * max|w| + max|bias| <= 2**31 - 1``.

The rest of an int8 graph must give the same values everywhere too: every other op is one exactly rounded
operation per value (IEEE 754 arithmetic, comparisons, casts, requantization), a move, a cut or a table
lookup (``EXACT_OPS``). An approximation (tanh, exp, sigmoid...) or a float sum in an implementation's own
order (a product left in float, a reduction) differs between backends in the last bits: onnxruntime's
tanh on x86 and in wasm differ in 45% of the bundled model's values, and a value near a uint8 rounding
boundary then gives another byte. ``export --int8`` writes the image's tanh as a table lookup.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .modelfile import QUANTIZED_OPS, ModelFile

PAIR_LIMIT = 2**15 - 1  # vpmaddubsw's signed 16-bit pair sum
SUM_LIMIT = 2**31 - 1
ACTIVATION_MAX = 255  # any byte: the bound holds for every input, calibrated or not
INT8, UINT8, INT32 = 3, 2, 6
# The ops that multiply integers, and where their weight and bias enter (QDQ: the float op between
# DequantizeLinear nodes, which onnxruntime fuses into its integer kernel; QOperator: the op itself).
WEIGHTED = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1, None), "ConvTranspose": (1, 2),
            "QLinearConv": (3, 8), "QLinearMatMul": (3, None), "QGemm": (3, 6),
            "ConvInteger": (1, None), "MatMulInteger": (1, None)}
QOPERATOR = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger"}
# Ops that give the same values on every backend: one exactly rounded operation per value, or none
EXACT_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Max", "Min", "Clip", "Relu", "LeakyRelu", "PRelu",
    "Round", "Floor", "Ceil", "Sign", "Where", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
    "Not", "And", "Or", "Xor", "Cast", "QuantizeLinear", "DequantizeLinear", "QLinearConcat",
    "Identity", "Reshape", "Transpose", "Slice", "Concat", "Split", "Gather", "GatherElements", "GatherND",
    "Squeeze", "Unsqueeze", "Flatten", "DepthToSpace", "SpaceToDepth", "Pad", "Tile", "Expand", "Shape",
    "Size", "Constant", "ConstantOfShape"})


@dataclass
class Layer:
    """One integer product of the graph and the largest sums it can reach."""

    op: str
    weight: str
    weight_type: str  # int8 / uint8
    max_abs_weight: int
    depth: int  # K: the products summed into one output
    pair_sum: int  # the largest 16-bit pair sum a saturating kernel would form (0: no such kernel path)
    dot_sum: int  # the largest whole dot product plus bias, in 32 bits

    @property
    def portable(self) -> bool:
        return self.pair_sum <= PAIR_LIMIT and self.dot_sum <= SUM_LIMIT

    def to_json(self) -> dict:
        return {"op": self.op, "weight": self.weight, "weight_type": self.weight_type,
                "max_abs_weight": self.max_abs_weight, "depth": self.depth, "pair_sum": self.pair_sum,
                "dot_sum": self.dot_sum, "portable": self.portable}


def _depth(op: str, node, dims: tuple[int, ...]) -> int:
    """The number of products summed into one output, from the weight's shape."""
    if op in ("Conv", "QLinearConv", "ConvInteger"):  # [M, C/group, kH, kW...]
        return int(np.prod(dims[1:]))
    if op == "ConvTranspose":  # [C, M/group, kH, kW...]: each output sums over C and the kernel
        return int(dims[0] * np.prod(dims[2:]))
    if op in ("Gemm", "QGemm"):
        return int(dims[1] if node.attributes.get("transB") else dims[0])
    return int(dims[-2]) if len(dims) >= 2 else int(dims[0])  # MatMul: [..., K, N]


def _dequantized(nodes) -> set[str]:
    """The tensors that ``nodes``' DequantizeLinear ops write."""
    return {n.outputs[0] for n in nodes if n.op_type == "DequantizeLinear" and n.outputs}


def _integer_product(node, quantized: set[str]) -> bool:
    """Whether ``node`` multiplies in integers: a QOperator op, or a float op of ``WEIGHTED`` whose input and
    weight are both dequantized (``quantized``), which onnxruntime fuses into its integer kernel."""
    if node.op_type in QOPERATOR:
        return True
    w_at = WEIGHTED.get(node.op_type, (None,))[0]
    return w_at is not None and len(node.inputs) > w_at and {node.inputs[0], node.inputs[w_at]} <= quantized


def layers(model: ModelFile) -> list[Layer]:
    """Every integer product in the main graph, with its bounds; ``ValueError`` where an integer
    product's weight is not a constant of the file (then nothing bounds it)."""
    g = model.graph
    hidden = sum(n.op_type in QUANTIZED_OPS for n in model.nodes()) - sum(n.op_type in QUANTIZED_OPS for n in g.nodes)
    if hidden:
        raise ValueError(f"{hidden} quantized ops sit in subgraphs or functions, where their sums are not checked")
    made_by = {out: n for n in g.nodes for out in n.outputs}
    quantized = _dequantized(g.nodes)
    out = []
    for node in g.nodes:
        if node.domain not in ("", "ai.onnx", "com.microsoft") or not _integer_product(node, quantized):
            continue
        w_at, b_at = WEIGHTED[node.op_type]
        weight_name = node.inputs[w_at] if node.op_type in QOPERATOR else made_by[node.inputs[w_at]].inputs[0]
        weight = g.initializers.get(weight_name)
        if weight is None:
            raise ValueError(f"{node.op_type} multiplies by {weight_name!r}, which is not a constant of the file")
        if weight.data_type not in (INT8, UINT8):
            raise ValueError(f"{node.op_type}'s weight {weight_name!r} is not 8-bit (ONNX type {weight.data_type})")
        w = weight.array().astype(np.int64)
        max_w = int(np.abs(w).max()) if w.size else 0
        depth = _depth(node.op_type, node, weight.dims)
        bias = 0
        b_name = node.inputs[b_at] if b_at is not None and len(node.inputs) > b_at else ""
        if b_name:
            b_name = made_by[b_name].inputs[0] if b_name in quantized else b_name
            b = g.initializers.get(b_name)
            if b is not None and b.data_type == INT32:
                bias = int(np.abs(b.array().astype(np.int64)).max()) if int(np.prod(b.dims)) else 0
        pair = 2 * ACTIVATION_MAX * max_w if weight.data_type == INT8 else 0
        out.append(Layer(node.op_type, weight_name, "int8" if weight.data_type == INT8 else "uint8", max_w, depth,
                         pair, depth * ACTIVATION_MAX * max(max_w, 1) + bias))
    return out


FUSED_ARITHMETIC = {"Add", "Mul"}  # between DequantizeLinear and QuantizeLinear: fused into kernels of their own


def inexact_ops(model: ModelFile) -> list[str]:
    """The op types of ``model`` (every node, subgraphs and functions too) whose values can differ between
    backends: not in ``EXACT_OPS``, not an integer product, not a nearest-neighbour Resize; and an Add or Mul
    between quantized tensors, which onnxruntime fuses into its QLinearAdd / QLinearMul kernels."""
    quantized = _dequantized(model.nodes())
    readers: dict[str, list[str]] = {}
    for n in model.nodes():
        for i in n.inputs:
            readers.setdefault(i, []).append(n.op_type)
    found = set()
    for n in model.nodes():
        if n.op_type in FUSED_ARITHMETIC and n.inputs and set(n.inputs) <= quantized and n.outputs \
                and readers.get(n.outputs[0]) == ["QuantizeLinear"]:
            found.add(f"{n.op_type} (between quantized tensors: onnxruntime runs QLinear{n.op_type})")
            continue
        if n.op_type in EXACT_OPS and n.domain in ("", "ai.onnx", "com.microsoft"):
            continue
        if n.op_type == "Resize" and n.attributes.get("mode", "nearest") == "nearest":
            continue
        if _integer_product(n, quantized):
            continue  # ``layers`` bounds it
        found.add(n.op_type)
    return sorted(found)


def report(model: ModelFile, per_layer: bool = True) -> dict:
    """``{"portable": bool, "pair_sum": worst 16-bit pair, "pair_limit", "layers": [...], "reason"}`` for an
    int8 graph: portable when no integer sum can saturate or wrap on any kernel path (a graph with no
    integer product, such as a float32 one, has none to). ``per_layer=False``: without ``layers`` (what a
    model's parity report and ``info`` carry)."""
    try:
        found = layers(model)
    except (ValueError, KeyError) as e:
        return {"portable": False, "reason": str(e), **({"layers": []} if per_layer else {})}
    bad = [layer for layer in found if not layer.portable]
    inexact = inexact_ops(model) if found else []  # a float graph's contract is a tolerance (docs/DESIGN.md)
    result = {"portable": not bad and not inexact, "pair_sum": max((layer.pair_sum for layer in found), default=0),
              "pair_limit": PAIR_LIMIT, "dot_sum": max((layer.dot_sum for layer in found), default=0),
              "dot_limit": SUM_LIMIT,
              "inexact_ops": inexact,
              **({"layers": [layer.to_json() for layer in found]} if per_layer else {})}
    if inexact and not bad:
        result["reason"] = (f"{', '.join(inexact)} compute{'s' if len(inexact) == 1 else ''} in float in a way that "
                            f"differs between backends in the last bits, so a value near a rounding boundary can "
                            f"give another byte (re-export with `dcgan-deploy export --int8`)")
    if bad:
        first = bad[0]
        result["reason"] = (f"{len(bad)} of {len(found)} integer products can saturate: {first.op} weight "
                            f"{first.weight!r} reaches |w| = {first.max_abs_weight}, a pair sum of {first.pair_sum:,} "
                            f"> {PAIR_LIMIT:,} on x86 CPUs without VNNI (re-export with `dcgan-deploy export --int8`)")
    return result


def summary(result: dict) -> str:
    """One line for ``info`` and ``export``."""
    if result["portable"]:
        if not result.get("dot_sum"):
            return "no integer products"
        pairs = (f"16-bit pairs <= {result['pair_sum']:,} of {PAIR_LIMIT:,}" if result["pair_sum"]
                 else "no 16-bit pairs: uint8 weights")
        return (f"the same on every CPU ({pairs}, dot products <= {result['dot_sum']:,} of {SUM_LIMIT:,}; "
                f"every float op exact)")
    return f"CPU-dependent: {result['reason']}"
