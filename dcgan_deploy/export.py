"""Export (torch -> ONNX): open the checkpoint, convert, validate with the parity gate.

The file lands at its destination only after the gate passes; a miss raises
``GateError`` carrying the report, and leaves no new file behind.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from . import __version__, directions, modelfile, parity
from .int8 import QOPERATOR, WEIGHTED
from .int8 import report as integer_sums
from .checkpoint import Checkpoint, class_names_fit, open_checkpoint
from .files import atomic_path, write_bytes
from .gate import GateError, Thresholds
from .forms import ChannelAffine, PhaseTail, phase_tail, phase_upsamples, transposed_forms
from .modelfile import write_metadata
from .nets import GeneratorNet, NetConfig

DEFAULT_OPSET = 18
MIN_OPSET = 17


# ---- convert -------------------------------------------------------------------------
@torch.no_grad()
def fold_batchnorm(model: GeneratorNet) -> GeneratorNet:
    """A copy of ``model`` with eval-mode BatchNorm folded into an adjacent linear layer.

    Folds BN into the Conv/ConvTranspose/Linear right before it (a 2-d BN also into a Linear whose
    output is unflattened into its channels), or, for a 1-d BN, into the Linear right after it. A BN
    that is neither (e.g. after a ReLU and
    before a transposed convolution, where borders make folding inexact) stays.
    """
    model = copy.deepcopy(model).eval()
    layers = list(model.main)
    for i, bn in enumerate(layers):
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        prev = layers[i - 1] if i else None
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(prev, nn.Unflatten) and i > 1 and isinstance(layers[i - 2], nn.Linear) \
                and isinstance(bn, nn.BatchNorm2d) and len(prev.unflattened_size) == 3 \
                and prev.unflattened_size[0] == bn.num_features:
            pixels = prev.unflattened_size[1] * prev.unflattened_size[2]  # [C*H*W] features, channel-major
            scale, shift = scale.repeat_interleave(pixels), shift.repeat_interleave(pixels)
            prev = layers[i - 2]
        if isinstance(prev, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and getattr(prev, "groups", 1) == 1:
            axis = 1 if isinstance(prev, nn.ConvTranspose2d) else 0  # output-channel axis of the weight
            shape = [1] * prev.weight.dim()
            shape[axis] = -1
            bias = prev.bias if prev.bias is not None else torch.zeros_like(scale)
            prev.weight.mul_(scale.reshape(shape))
            prev.bias = nn.Parameter(bias * scale + shift)
            layers[i] = nn.Identity()
        elif isinstance(bn, nn.BatchNorm1d) and isinstance(nxt, nn.Linear):
            nxt.bias.add_(nxt.weight @ shift)
            nxt.weight.mul_(scale[None, :])
            layers[i] = nn.Identity()
    model.main = nn.Sequential(*[m for m in layers if not isinstance(m, nn.Identity)])
    return model


def deploy_form(model: GeneratorNet, int8: bool = False, forms: bool = True) -> nn.Module:
    """What the export traces: ``model`` with BatchNorm folded, in an exactly equivalent form that
    onnxruntime runs faster (``forms``): where the generator ends in upsample, conv, ReLU, conv, tanh
    (mnist-dcgan, mnist-dcgan-wide, pytorch-gan-dcgan), that tail per output phase on the small map
    (``PhaseTail``, 4/9 of the tail's multiply-adds; ``int8``: the form the int8 variant is quantized from,
    with fewer separately rounded tensors); every other upsample, conv, (leaky) ReLU per output phase too,
    interleaved to full size (``PhaseUp``); transposed convolutions (dcgan64, mnist-convt) as convolutions
    per output phase (``transposed_forms``). ``forms=False``: the plain folded graph (for other runtimes,
    and for debugging)."""
    folded = fold_batchnorm(model)
    if not forms:
        return folded
    formed = phase_tail(folded, taps=not int8) or transposed_forms(folded) or folded
    return phase_upsamples(formed) or formed


INDIRECT_INT8_CHANNELS = 16  # from this many output channels onnxruntime's x86 int8 convolution runs its
# indirect kernel; below, it copies an im2col (for the int8 tail's last convolution, 1,024 bytes a pixel)


def int8_form(model: GeneratorNet, weight_bits: int = 7) -> nn.Module:
    """The float32 graph ``export --int8`` quantizes: ``deploy_form(model, int8=True)``, its phase tail's last
    convolution split into levels (``PhaseTail.split``): the weights as ``weight_bits`` bits round them, plus
    the rest at a gain, the rest of that at another, and so on -- two levels, or as many as bring the
    convolution's output channels (4 phases x Co per level) to ``INDIRECT_INT8_CHANNELS`` (four for a
    one-channel image). Each gain is fitted on the calibration latents: its level's outputs must stay within
    the range the quantizer gives the convolution's own outputs (their calibrated range, capped at
    +-``TANH_RANGE``), so that sharing the tensor does not coarsen their steps."""
    form = deploy_form(model, int8=True)
    for i, layer in enumerate(form.main):  # what fold_batchnorm left: exactly rounded ops in float
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            form.main[i] = ChannelAffine(layer)
    tail = form.main[-1]
    if not isinstance(tail, PhaseTail):
        return form
    per_level = tail.conv_b.out_channels
    levels = max(2, -(-INDIRECT_INT8_CHANNELS // per_level))
    seen = {"low": 0.0, "high": 0.0}
    for _ in range(levels - 1):
        rest = tail.rounding_rest(weight_bits)
        seen["rest"] = 0.0

        def measure(module, args, out):
            seen["rest"] = max(seen["rest"], float(torch.nn.functional.conv2d(args[0], rest, padding=1).abs().max()))
            if not tail.gains:  # the convolution's own outputs, before any split
                seen["low"], seen["high"] = min(seen["low"], float(out.min())), max(seen["high"], float(out.max()))
        hook = tail.conv_b.register_forward_hook(measure)
        try:
            with torch.no_grad():
                for feeds in calibration_feeds(model.cfg):
                    form(*(torch.from_numpy(v) for v in feeds.values()))
        finally:
            hook.remove()
        tail.split(weight_bits, seen["rest"], min(TANH_RANGE, -seen["low"], seen["high"]))
    return form


def to_onnx(model: nn.Module, cfg: NetConfig, dest: str | os.PathLike, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``model`` (as it is: eval or not) to ONNX ``z -> image`` with a dynamic batch axis; a
    class-conditional one to ``z, label -> image`` (``label`` int64 ``[batch]``)."""
    example = (torch.zeros(2, cfg.latent_dim),)  # batch > 1, so no size-1 specialisation
    names = ["z"]
    batch = torch.export.Dim("batch")
    shapes = {"z": {0: batch}}
    if cfg.num_classes:
        example = (*example, torch.zeros(2, dtype=torch.int64), torch.ones(2, dtype=torch.int64), torch.zeros(2))
        names = ["z", "label", *CLASS_MIX]
        shapes = {**shapes, "label": {0: batch}, "label_to": {0: batch}, "mix": {0: batch}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, example, input_names=names, output_names=["image"], opset_version=opset,
            dynamic_shapes=shapes, dynamo=True, verbose=False)
    program.save(str(dest))
    if cfg.num_classes:
        class_mix_defaults(dest)


CLASS_MIX = ("label_to", "mix")  # a conditional file's optional inputs: a walk between two classes


def class_mix_defaults(path: str | os.PathLike) -> None:
    """Give a conditional file's ``label_to`` and ``mix`` inputs defaults (``[0]`` and ``[0.0]``: initializers
    of the same names, which onnxruntime lets a caller override), so a caller that feeds ``z`` and ``label``
    alone gets exactly ``label``'s images; one ``[1]`` value or one per image, whatever the batch."""
    model = onnx.load(str(path))
    with_class_mix_defaults(model)
    onnx.save(model, str(path))


def with_class_mix_defaults(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    kept = [i for i in graph.input if i.name not in CLASS_MIX]
    for name, value in zip(CLASS_MIX, (np.zeros(1, np.int64), np.zeros(1, np.float32))):
        graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        kept.append(onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype),
                                                       [f"{name}_count"]))
    del graph.input[:]
    graph.input.extend(kept)
    del graph.value_info[:]  # the tracer's intermediate shapes say [batch, ...] where a [1] mix now broadcasts
    return model


def without_class_mix_defaults(model: onnx.ModelProto) -> bool:
    """Drop the defaults of ``label_to`` and ``mix`` (they stay inputs); whether the file had them."""
    kept = [t for t in model.graph.initializer if t.name not in CLASS_MIX]
    had = len(kept) < len(model.graph.initializer)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return had


def check_graph(path: str | os.PathLike) -> None:
    """The ONNX checker, then the runtime's own refusal of random and training-only ops."""
    onnx.checker.check_model(onnx.load(str(path)))
    try:
        modelfile.check_ops(modelfile.read(path))
    except modelfile.ModelError as e:
        raise GateError(str(e), {}) from None


def base_metadata(c: Checkpoint, opset: int) -> dict[str, str]:
    cfg = c.cfg
    return ({"average": c.average} if c.average else {}) | {
        modelfile.FORMAT_KEY: modelfile.FORMAT,
        "dcgan_deploy.version": __version__,
        "architecture": cfg.arch,
        "latent_dim": str(cfg.latent_dim),
        "latent_prior": cfg.latent_prior,
        "channels": str(cfg.channels),
        "height": str(cfg.image_size),
        "width": str(cfg.image_size),
        "value_range": "[-1, 1]",
        "dataset": c.dataset,
        "train_step": str(c.train_step),
        "torch_version": torch.__version__,
        "opset": str(opset),
        "net_config": json.dumps(cfg.to_dict()),
    } | ({"classes": json.dumps(list(c.classes))} if c.classes else {})


def check_opset(opset) -> int:
    """An opset from ``MIN_OPSET`` to the newest the installed onnx knows."""
    highest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= highest:
        raise ValueError(f"--opset must be from {MIN_OPSET} to {highest} (the newest onnx {onnx.__version__} knows), "
                         f"got {opset!r}")
    return opset


# ---- the whole export ------------------------------------------------------------------
def export(ckpt: str | os.PathLike, out: str | os.PathLike | None = None, arch: str | None = None,
           opset: int = DEFAULT_OPSET, fp16: bool = False, int8: bool = False, triton: str | os.PathLike | None = None,
           thresholds: Thresholds | None = None, name: str | None = None, forms: bool = True,
           labelled: bool = False, attribution: str | None = None, classes: list[str] | None = None) -> dict:
    """Checkpoint -> ``out`` (default ``exports/<name>.onnx``), proven by the parity gate.

    Returns ``{"model": path, "report": path, "parity": report, ...}``. On a parity
    miss raises ``GateError`` (with the report) and nothing new is left at ``out``.
    ``forms=False`` writes the plain graph instead of the CPU-tuned forms. The file carries its SeFa latent
    directions (and with ``labelled`` the classifier-labelled ones, see ``directions``); so do its variants.
    ``attribution``: the credit the training data asks for (a licence's terms), kept in the metadata.
    ``classes``: a conditional generator's class names, in label order (for a checkpoint that does not name
    them, such as a bare state dict, whose classes are otherwise "0", "1", ...).
    """
    opset = check_opset(opset)
    if out is not None and Path(out).suffix.lower() != ".onnx":
        raise ValueError(f"-o {out}: an exported model is an ONNX file; give a path ending in .onnx")
    c = open_checkpoint(ckpt, arch)
    if classes is not None:
        if not c.cfg.num_classes:
            raise ValueError(f"--classes: {ckpt} is not class-conditional; it has no classes to name")
        if not class_names_fit(list(classes), c.cfg.num_classes):
            raise ValueError(f"--classes: {ckpt} has {c.cfg.num_classes} classes; give {c.cfg.num_classes} different "
                             f"names, got {', '.join(map(repr, classes))}")
        c.classes = tuple(classes)
    if c.classes and labelled:
        raise ValueError(f"{ckpt} is class-conditional: --labelled (directions towards a class) does not take such "
                         "a generator; its label gives the class outright")
    name = name or (Path(out).stem if out else c.name)
    out = Path(out) if out else Path("exports") / f"{name}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    report_path = out.with_suffix(".parity.json")
    result = {"model": str(out), "report": str(report_path), "name": name, "source": c.source, "notes": c.notes,
              "forms": forms}
    with atomic_path(out) as tmp:
        to_onnx(deploy_form(c.model, forms=forms), c.cfg, tmp, opset)
        check_graph(tmp)
        meta = base_metadata(c, modelfile.read(tmp).opsets.get("", opset))  # the opset the exporter really wrote
        if attribution:
            meta["attribution"] = attribution
        write_metadata(tmp, meta)
        report = parity.run_gate(c.model, tmp, thresholds)
        result["parity"] = report
        if not report["passed"]:
            write_report(report_path, result)
            raise GateError(f"parity gate failed; {out} was not written", report)
        found = directions.compute(tmp, labelled_too=labelled)
        meta["directions"] = directions.to_metadata(found, "dcgan-deploy export" + (" --labelled" if labelled else ""))
        write_metadata(tmp, {**meta, "parity": json.dumps(parity.gate_summary(report))})
    result["directions"] = [d.name for d in found]
    write_report(report_path, result)
    if fp16:
        result["fp16"] = export_fp16(c, out, meta, thresholds or Thresholds())
    if int8:
        result["int8"] = export_int8(c, out, meta, thresholds or Thresholds(), opset)
    if triton:
        from .triton import write_model_repository
        result["triton"] = str(write_model_repository(out, Path(triton), name))
    return result


def write_report(path: Path, result: dict) -> None:
    """``<name>.parity.json``: what was exported from what, and the full gate report."""
    summary = {k: v for k, v in result.items() if k != "parity"}
    write_bytes(path, (json.dumps({"result": summary, "parity": result["parity"]}, indent=2) + "\n").encode())


def export_fp16(c: Checkpoint, fp32_path: Path, meta: dict[str, str], thresholds: Thresholds) -> dict:
    """A float16 variant (float32 inputs and outputs) beside the fp32 file, with its own gate.

    On CUDA the gate runs there and must pass. Without CUDA it runs on the CPU where it can: a pass is
    recorded as unverified (fp16 is meant for CUDA), a miss fails the export, and a CPU build that
    cannot run the file at all (no float16 kernels for an op) is recorded as unverified with why."""
    from onnxconverter_common import float16

    from .runtime import ModelError

    out = fp32_path.with_name(fp32_path.stem + "-fp16.onnx")
    model = onnx.load(str(fp32_path))
    mixes = without_class_mix_defaults(model)  # so the converter keeps them float32 inputs, as z
    model = float16.convert_float_to_float16(model, keep_io_types=True)
    if mixes:
        with_class_mix_defaults(model)
    has_cuda = parity.CUDA in parity.providers_to_check()
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
        write_metadata(tmp, {**meta, "precision": "float16"})
        if has_cuda:
            report = precision_gate(c.model, tmp, thresholds, "float16", providers=[parity.CUDA])
        else:
            try:
                report = precision_gate(c.model, tmp, thresholds, "float16", providers=[parity.CPU])
            except ModelError as e:  # onnxruntime's CPU build lacks float16 kernels for some ops
                report = {"passed": None, "failures": [f"could not run the fp16 model on CPU: {e}"]}
        if report["passed"] is False:
            raise GateError(f"fp16 parity gate failed; {out} was not written", report)
        report["verified"] = has_cuda
        if not has_cuda:
            report["reason"] = "no CUDA provider here to check the fp16 model on" + (
                " (it passed the fp16 gate on CPU)" if report["passed"] else "")
        write_metadata(tmp, {**meta, "precision": "float16", "parity": json.dumps(parity.gate_summary(report))})
    result = {"model": str(out), "report": str(out.with_suffix(".parity.json")), "precision": "float16",
              "parity": report}
    write_report(out.with_suffix(".parity.json"), result)
    return result


# Calibration latents for the int8 variant: seeds disjoint from the parity gate's (0, 1, 2).
INT8_CALIBRATION_SEEDS = tuple(range(1000, 1008))
INT8_CALIBRATION_BATCH = 64


def calibration_feeds(cfg: NetConfig) -> list[dict[str, np.ndarray]]:
    """The int8 calibration batches, as a model's inputs in order: ``INT8_CALIBRATION_SEEDS`` x
    ``INT8_CALIBRATION_BATCH`` latents through the seed -> latent contract (a conditional model: with
    its class inputs, ``class_feeds``)."""
    from .latent import latents, seed_labels

    return [{"z": latents(INT8_CALIBRATION_BATCH, seed, cfg.latent_dim, cfg.latent_prior)}
            | (class_feeds(seed_labels(INT8_CALIBRATION_BATCH, seed, cfg.num_classes)) if cfg.num_classes else {})
            for seed in INT8_CALIBRATION_SEEDS]


def quantize_int8(fp32_path: str | os.PathLike, dest: str | os.PathLike, cfg: NetConfig,
                  activations: str = "uint8", weight_bits: int = 7) -> None:
    """Static int8 quantization of an fp32 export (onnxruntime, QDQ format).

    Weights int8 per output channel in 7 bits (``reduce_range``: within +-64, so that no pair of
    products can pass 16 bits on x86 CPUs without VNNI and the same file gives the same bytes on every
    CPU -- ``int8.report`` proves it from the file); activations ``uint8`` or ``int8`` with MinMax ranges
    calibrated on the model's own prior (``INT8_CALIBRATION_SEEDS`` x ``INT8_CALIBRATION_BATCH``
    latents through the seed -> latent contract), except that the image's pre-tanh values are quantized over
    at most +-``TANH_RANGE`` (``tanh_input_caps``). Elementwise arithmetic stays in float, and the image's
    tanh becomes a table lookup (``tanh_by_table``): every op outside the integer products exactly rounded,
    so the same values everywhere. Deterministic: the same file, the same result.
    ``weight_bits=8``: the full int8 range, CPU-dependent (only for measuring what 7 bits cost).
    """
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations must be uint8 or int8, got {activations!r}")
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits!r}")

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(calibration_feeds(cfg))

        def get_next(self):
            return next(self.feeds, None)

    root = logging.getLogger()  # the quantizer logs per-tensor chatter on the root logger
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"  # shapes inferred and graph simplified, as the quantizer wants it
            plain = onnx.load(str(fp32_path))
            mixes = without_class_mix_defaults(plain)  # else the simplifier folds the class walk away
            onnx.save(plain, str(Path(tmp) / "plain.onnx"))
            quant_pre_process(str(Path(tmp) / "plain.onnx"), str(pre), skip_symbolic_shape=True)
            # every op the quantizer knows but elementwise arithmetic: in float each is one exactly rounded
            # operation per value, where onnxruntime would run QLinearAdd / QLinearMul kernels of its own
            ops = sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - ELEMENTWISE)
            end = float_end(onnx.load(str(pre)))

            def quantize(overrides: dict):
                quantize_static(str(pre), str(dest), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                                op_types_to_quantize=ops, nodes_to_exclude=sorted(end),
                                weight_type=QuantType.QInt8, reduce_range=weight_bits == 7,
                                activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                                extra_options={"TensorQuantOverrides": overrides} if overrides else {})
            quantize({})
            first = onnx.load(str(dest))
            overrides = {**shared_concat_ranges(first), **tanh_input_caps(first, end)}
            if overrides:
                quantize(overrides)
            done = onnx.load(str(dest))
            if tanh_by_table(done):
                onnx.save(done, str(dest))
            if mixes:
                class_mix_defaults(dest)
    finally:
        root.setLevel(level)


ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div"})
TANH_RANGE = 4.0  # beyond +-4 tanh is within 7e-4 of +-1: the extreme uint8 levels, whatever the input


WEIGHTED_OPS = frozenset(WEIGHTED) - QOPERATOR  # the float ops that multiply by weights (int8.WEIGHTED)


def float_end(model: onnx.ModelProto) -> set[str]:
    """The nodes of a float32 graph after its last products (no Conv, Gemm or MatMul downstream of them):
    the image's activation and the moves and cuts after it, ``PhaseTail.split``'s sum. The int8 file keeps
    them in float: re-quantizing them would only add roundings, and each is one exactly rounded operation
    per value (or none), the same on every CPU."""
    consumers = _consumers(model)
    ahead: dict[int, bool] = {}  # node -> a product lies at or after it

    def feeds_product(n) -> bool:
        if id(n) not in ahead:
            ahead[id(n)] = n.op_type in WEIGHTED_OPS or any(
                feeds_product(c) for out in n.output for c in consumers.get(out, []))
        return ahead[id(n)]
    return {n.name for n in model.graph.node if not feeds_product(n)}


def _consumers(model: onnx.ModelProto) -> dict[str, list]:
    consumers = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    return consumers


def _ranges(model: onnx.ModelProto):
    """(initializers as arrays, node by output name, QuantizeLinear by the float tensor it quantizes)."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    quantizers = {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return init, producers, quantizers


def tanh_input_caps(model: onnx.ModelProto, end: set[str]) -> dict:
    """Quantization ranges for the last products' outputs (where the ``float_end`` starts) when the image's
    activation is a Tanh, capped at +-``TANH_RANGE`` where the calibrated range is wider: ``{tensor: [{"rmin",
    "rmax"}]}`` for the quantizer's overrides. MinMax calibration takes the range of the pre-tanh values, tens
    of units wide where tanh saturates; its 8 bits then step by a tenth of a unit or more where the image is
    made (the bundled model: 0.56). Capped, they step by 8 / 255, in integers as before (the same bytes on
    every CPU)."""
    if not any(n.op_type == "Tanh" and n.name in end for n in model.graph.node):
        return {}
    init, producers, _ = _ranges(model)
    quantized = {}  # a value entering the float end is a DequantizeLinear's output; its QuantizeLinear holds the range
    for name in {i for n in model.graph.node if n.name in end for i in n.input}:
        dq = producers.get(name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[1] not in init or q.input[2] not in init:
            continue
        scale, zero = float(init[q.input[1]]), init[q.input[2]]
        info = np.iinfo(zero.dtype)
        low, high = (info.min - int(zero)) * scale, (info.max - int(zero)) * scale
        if low < -TANH_RANGE or high > TANH_RANGE:
            quantized[q.input[0]] = [{"rmin": np.float32(max(low, -TANH_RANGE)), "rmax": np.float32(min(high, TANH_RANGE))}]
    return quantized


TANH_STEP = 2.0 ** -10  # the grid table's step: within 2**-11 of tanh, a sixteenth of a uint8 level
TANH_TABLE_RANGE = 4.0  # the grid table's ends: beyond +-4, tanh is within 7e-4 of +-1


def tanh_by_table(model: onnx.ModelProto) -> int:
    """Replace each float Tanh of an int8 graph (the image's activation, after the last product) by a table
    lookup, in place; returns how many. Implementations of tanh differ in the last bits (onnxruntime's x86
    kernels and its wasm build: 45% of the bundled model's values, by up to 4e-7), so a value near a uint8
    rounding boundary could give another byte on another backend; a lookup is the same everywhere. Tables
    are float32 tanh computed by numpy in float64, written into the file; each op of a lookup rounds once
    per value or not at all:

    - a Tanh of a DequantizeLinear of bytes (one scale and zero point, nothing else reading the dequantized
      values): both become one lookup of the byte in a table of tanh of all 256 dequantized values -- the
      same values as before, with no float op at all;
    - any other Tanh (the split tail's sum of levels): the input times 2**10 (exact) plus the table's middle
      and a half, clipped to the table, cast to an integer (truncation: the nearest step), looked up in a
      table of tanh of every 2**-10 from -``TANH_TABLE_RANGE`` to +``TANH_TABLE_RANGE`` (beyond, tanh is
      within 7e-4 of +-1): within 2**-11 of tanh of the input.

    The lookups are GatherElements of the flattened indices (onnxruntime's Gather is 4x slower at it)."""
    graph = model.graph
    init, producers, _ = _ranges(model)
    readers = _consumers(model)

    def is_tanh(n) -> bool:
        return n.op_type == "Tanh" and n.domain in ("", "ai.onnx")

    def byte_source(x: str):
        """(the DequantizeLinear, its table) when x dequantizes bytes with one scale and zero point for Tanh alone."""
        dq = producers.get(x)
        if dq is None or dq.op_type != "DequantizeLinear" or len(readers.get(x, [])) != 1 or len(dq.input) < 3:
            return None
        if dq.input[1] not in init or dq.input[2] not in init or x in {o.name for o in graph.output}:
            return None
        scale, zero = init[dq.input[1]], init[dq.input[2]]
        if scale.size != 1 or zero.size != 1 or zero.dtype not in (np.uint8, np.int8):
            return None
        codes = np.arange(256, dtype=np.int64) - (128 if zero.dtype == np.int8 else 0)  # index 0: the lowest code
        values = ((codes - int(zero.reshape(()))).astype(np.float32) * scale.astype(np.float32).reshape(()))
        return dq, np.tanh(values.astype(np.float64)).astype(np.float32), 128 if zero.dtype == np.int8 else 0

    if not any(is_tanh(n) for n in graph.node):
        return 0
    half = int(round(TANH_TABLE_RANGE / TANH_STEP))
    constants = {"tanh_table_flat": np.array([-1], np.int64)}
    nodes, make, dropped, count = [], onnx.helper.make_node, set(), 0
    for node in graph.node:
        if not is_tanh(node):
            nodes.append(node)
            continue
        x, y, t = node.input[0], node.output[0], f"{node.name or node.output[0]}_table"
        source = byte_source(x)
        if source is not None:
            dq, table, shift = source
            dropped.add(dq.output[0])
            constants[t] = table
            index = [make("Cast", [dq.input[0]], [f"{t}_index"], name=f"{t}_index", to=onnx.TensorProto.INT32)]
            if shift:
                constants[f"{t}_shift"] = np.int32(shift)
                index.append(make("Add", [f"{t}_index", f"{t}_shift"], [f"{t}_index0"], name=f"{t}_index0"))
            table_name, shape_of = t, dq.input[0]
        else:
            if "tanh_table" not in constants:
                grid = np.arange(-half, half + 1, dtype=np.float64) * TANH_STEP
                constants.update({"tanh_table": np.tanh(grid).astype(np.float32),
                                  "tanh_table_per_step": np.float32(1 / TANH_STEP),
                                  "tanh_table_middle": np.float32(half + 0.5), "tanh_table_first": np.float32(0),
                                  "tanh_table_last": np.float32(2 * half)})
            table_name, shape_of = "tanh_table", x
            index = [make("Mul", [x, "tanh_table_per_step"], [f"{t}_steps"], name=f"{t}_steps"),
                     make("Add", [f"{t}_steps", "tanh_table_middle"], [f"{t}_at"], name=f"{t}_at"),
                     make("Clip", [f"{t}_at", "tanh_table_first", "tanh_table_last"], [f"{t}_in"], name=f"{t}_in"),
                     make("Cast", [f"{t}_in"], [f"{t}_index"], name=f"{t}_index", to=onnx.TensorProto.INT32)]
        nodes += index + [
            make("Reshape", [index[-1].output[0], "tanh_table_flat"], [f"{t}_flat"], name=f"{t}_flat"),
            make("GatherElements", [table_name, f"{t}_flat"], [f"{t}_values"], name=t, axis=0),
            make("Shape", [shape_of], [f"{t}_shape"], name=f"{t}_shape"),
            make("Reshape", [f"{t}_values", f"{t}_shape"], [y], name=f"{t}_out")]
        count += 1
    nodes = [n for n in nodes if not (n.op_type == "DequantizeLinear" and n.output[0] in dropped)]
    graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in constants.items())
    del graph.node[:]
    graph.node.extend(nodes)
    return count


MOVES = ("Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten")  # ops that only move values


def shared_concat_ranges(model: onnx.ModelProto) -> dict:
    """Quantizer overrides that give every quantized Concat's inputs (and the moves before them) the Concat's
    own scale and zero point: ``{tensor: [{"scale", "zero_point"}]}``. onnxruntime's QLinearConcat then copies
    bytes instead of re-mapping each one through a table, and a value is rounded once, not twice. The inputs'
    own ranges lie within the Concat's (MinMax: its range is their union), so no value is clipped. A tensor
    that something else reads as well keeps its own range."""
    init, producers, quantizers = _ranges(model)
    consumers = _consumers(model)

    def readers(q) -> int:  # the ops that read a QuantizeLinear's value, through its DequantizeLinears
        return sum(len(consumers.get(dq.output[0], [])) for dq in consumers.get(q.output[0], []))
    shared = {}
    for node in model.graph.node:
        q = quantizers.get(node.output[0]) if node.op_type == "Concat" else None
        if q is None or q.input[1] not in init or q.input[2] not in init:
            continue
        params = [{"scale": init[q.input[1]].astype(np.float32), "zero_point": init[q.input[2]]}]
        for name in node.input:
            dq = producers.get(name)
            while dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in producers:
                value = producers[dq.input[0]]  # the QuantizeLinear of a float tensor
                if value.op_type != "QuantizeLinear" or readers(value) != 1:
                    break
                shared[value.input[0]] = params
                mover = producers.get(value.input[0])
                dq = producers.get(mover.input[0]) if mover is not None and mover.op_type in MOVES else None
    return shared


def class_feeds(labels: np.ndarray) -> dict:
    """A conditional file's class inputs for calibrating on ``labels``: each image also part of the way (0,
    0.1, ... 1) towards the next image's class, so the class walk keeps its range once quantized."""
    return {"label": labels, "label_to": np.roll(labels, 1),
            "mix": (np.arange(len(labels)) % 11 / 10).astype(np.float32)}


def export_int8(c: Checkpoint, fp32_path: Path, meta: dict[str, str], thresholds: Thresholds,
                opset: int = DEFAULT_OPSET) -> dict:
    """An int8 variant for the CPU beside the fp32 file, gated on PSNR against PyTorch fp32."""
    import tempfile

    out = fp32_path.with_name(fp32_path.stem + "-int8.onnx")
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory() as work:
        source = Path(work) / "int8-form.onnx"  # float32, in the form that quantizes best
        to_onnx(int8_form(c.model), c.cfg, source, opset)
        quantize_int8(source, tmp, c.cfg)
        write_metadata(tmp, {**meta, "precision": "int8"})
        report = precision_gate(c.model, tmp, thresholds, "int8")
        if not report["passed"]:
            raise GateError(f"int8 parity gate failed; {out} was not written", report)
        write_metadata(tmp, {**meta, "precision": "int8", "parity": json.dumps(parity.gate_summary(report))})
    result = {"model": str(out), "report": str(out.with_suffix(".parity.json")), "precision": "int8",
              "parity": report}
    write_report(out.with_suffix(".parity.json"), result)
    return result


PRECISIONS = ("float32", "float16", "int8")


def precision_gate(model: nn.Module, path, thresholds: Thresholds, precision: str,
                   providers: list[str] | None = None) -> dict:
    """The gate a file of ``precision`` is held to: float32 max abs error on every provider;
    float16 and int8 (on the CPU, where it is meant to run) a minimum PSNR."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8":
        report = parity.run_gate(model, path, thresholds, providers=providers or [parity.CPU],
                                 min_psnr=thresholds.int8_min_psnr)
        # the same values on every CPU and in wasm: proved from the file
        report["integer_sums"] = sums = integer_sums(modelfile.read(path), per_layer=False)
        if not sums["portable"]:
            report["passed"] = False
            report["failures"].append(f"the same everywhere: {sums['reason']}")
    elif precision == "float16":
        report = parity.run_gate(model, path, thresholds, providers=providers, min_psnr=thresholds.fp16_min_psnr)
    else:
        report = parity.run_gate(model, path, thresholds, providers=providers)
    report["precision"] = precision
    return report


def verify(model_path: str | os.PathLike, ckpt: str | os.PathLike, arch: str | None = None,
           thresholds: Thresholds | None = None, precision: str | None = None) -> dict:
    """Re-run the parity gate on an existing ONNX file against its checkpoint.

    The gate follows what the file is -- its graph: quantize/dequantize ops make it int8 (PSNR gate, on
    the CPU), float16 weights float16 (PSNR gate), else float32 (max abs error) -- or the caller's
    ``precision``; never the file's own metadata, which the file under test could set to pick a
    laxer gate. A metadata claim that disagrees with the graph is reported.
    """
    from .runtime import Generator

    runtime = Generator.load(model_path, device="cpu")  # the runtime's checks first: a file it refuses fails here
    c = open_checkpoint(ckpt, arch)
    chosen = precision or runtime.precision
    report = precision_gate(c.model, model_path, thresholds or Thresholds(), chosen)
    claimed = runtime.metadata.get("precision", "float32")
    if claimed != runtime.precision:
        report["metadata_precision"] = modelfile.printable(claimed, 100)
        report.setdefault("notes", []).append(
            f"the file's metadata says precision={report['metadata_precision']}, its graph is {runtime.precision}; "
            f"the {chosen} gate was applied")
    return report
