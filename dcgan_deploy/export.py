"""Export (torch -> ONNX): describe the checkpoint, convert, validate with the parity gate.

The file lands at its destination only after the gate passes; a miss raises
``ParityError`` carrying the report, and leaves no new file behind.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from . import __version__, parity
from .checkpoint import STATE_FORMAT, CheckpointError, load_generator_file, load_torch
from .files import atomic_path, write_bytes
from .forms import phase_tail, transposed_forms
from .nets import Generator, NetConfig

FORMAT = "1"
DEFAULT_OPSET = 18
# Ops that must never appear in a deployable generator graph.
FORBIDDEN_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                 "Bernoulli", "Dropout"}


class ParityError(RuntimeError):
    """The exported graph failed the parity gate; ``report`` holds the numbers."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass
class Described:
    """A checkpoint, understood: the eval-mode generator, its config and provenance."""

    model: Generator
    cfg: NetConfig
    name: str
    dataset: str = "unknown"
    train_step: int = -1
    source: str = ""
    notes: list[str] = field(default_factory=list)


# ---- describe ------------------------------------------------------------------------
def describe(ckpt: str | os.PathLike, arch: str | None = None) -> Described:
    """Load any supported checkpoint into an eval-mode ``Generator``.

    Accepts the trainer's ``train_state.pt`` and ``generator.safetensors``, and a bare
    generator state dict (e.g. ``netG_epoch_N.pth`` from pytorch/examples' DCGAN)
    when ``arch`` names its architecture.
    """
    path = Path(ckpt)
    name = path.parent.name if path.name in ("train_state.pt", "generator.safetensors") else path.stem
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        state, cfg, meta = load_generator_file(path)
        if cfg is None:
            cfg = infer_config(state, _need_arch(arch, path))
        elif arch and arch != cfg.arch:
            raise CheckpointError(f"{path}: holds a {cfg.arch} generator, not {arch}")
        model = _build(cfg, state, path)
        return Described(model, cfg, name, meta.get("dataset", "unknown"), int(meta.get("train_step", -1)), str(path))
    obj = load_torch(path)
    if obj.get("format") == STATE_FORMAT and "net_config" in obj:
        cfg = NetConfig.from_dict(obj["net_config"])
        if arch and arch != cfg.arch:
            raise CheckpointError(f"{path}: holds a {cfg.arch} generator, not {arch}")
        tcfg = obj["train_config"]
        weights = obj["ema"] if obj.get("ema") else obj["G"]
        model = _build(cfg, weights, path)
        notes = []
        if obj.get("ema"):
            from .train import recompute_bn_stats  # the same re-estimation the trainer applies
            recompute_bn_stats(model, seed=tcfg.get("seed", 0))
            model.eval()
            notes.append("EMA weights, BatchNorm statistics re-estimated")
        return Described(model, cfg, name, tcfg.get("data", "unknown"), int(obj["step"]), str(path), notes)
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    cfg = infer_config(state, _need_arch(arch, path))
    return Described(_build(cfg, state, path), cfg, name, source=str(path))


def _need_arch(arch: str | None, path: Path) -> str:
    if not arch:
        raise CheckpointError(f"{path}: a bare state dict does not say its architecture; pass --arch "
                              "(e.g. --arch dcgan64 for pytorch/examples' netG_epoch_N.pth)")
    return arch


def infer_config(state: dict, arch: str) -> NetConfig:
    """A ``NetConfig`` for a bare state dict: sizes read off the weight shapes where the arch allows."""
    cfg = NetConfig.for_arch(arch)
    if arch == "dcgan64" and "main.0.weight" in state and "main.12.weight" in state:
        nz, ngf8 = state["main.0.weight"].shape[:2]         # ConvT(nz -> ngf*8): weight [nz, ngf*8, 4, 4]
        nc = state["main.12.weight"].shape[1]               # ConvT(ngf -> nc):   weight [ngf, nc, 4, 4]
        cfg = NetConfig.for_arch(arch, latent_dim=int(nz), g_width=int(ngf8) // 8, channels=int(nc))
    return cfg


def _build(cfg: NetConfig, state: dict, path: Path) -> Generator:
    """A Generator with ``state`` loaded strictly; the first mismatch is named."""
    model = Generator(cfg)
    want = model.state_dict()
    for key, tensor in want.items():
        if key not in state:
            raise CheckpointError(f"{path}: does not match {cfg.arch}: key {key} (shape {list(tensor.shape)}) "
                                  "is missing from the checkpoint")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: does not match {cfg.arch}: key {key} has shape {list(state[key].shape)} "
                                  f"in the checkpoint, {list(tensor.shape)} in the architecture")
    extra = [k for k in state if k not in want]
    if extra:
        raise CheckpointError(f"{path}: does not match {cfg.arch}: unexpected key {extra[0]}")
    model.load_state_dict(state)
    model.eval()
    check_batchnorm(model, path)
    return model


def check_batchnorm(model: nn.Module, path: Path | str = "model") -> None:
    """Every BatchNorm must carry finite running statistics (eval mode uses them)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None or m.running_var is None:
                raise CheckpointError(f"{path}: BatchNorm {name} has no running statistics")
            if not (torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all()
                    and (m.running_var >= 0).all()):
                raise CheckpointError(f"{path}: BatchNorm {name} has non-finite or negative running statistics")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise CheckpointError(f"{path}: weight {name} has non-finite values")


# ---- convert -------------------------------------------------------------------------
@torch.no_grad()
def fold_batchnorm(model: Generator) -> Generator:
    """A copy of ``model`` with eval-mode BatchNorm folded into an adjacent linear layer.

    Folds BN into the Conv/ConvTranspose/Linear right before it, or, for a 1-d BN,
    into the Linear right after it. A BN that is neither (e.g. after a ReLU and
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


def deploy_form(model: Generator, int8: bool = False) -> nn.Module:
    """What the export traces: ``model`` with BatchNorm folded, in an exactly equivalent form that
    onnxruntime runs faster (``forms``): where the generator ends in upsample, conv, ReLU, conv, tanh
    (mnist-dcgan, mnist-dcgan-wide), that tail per output parity on the small map (``PhaseTail``,
    4/9 of the tail's multiply-adds; ``int8``: the form the int8 variant is quantized from, with
    fewer separately rounded tensors); transposed convolutions (dcgan64, mnist-convt) as
    convolutions per output parity (``transposed_forms``)."""
    folded = fold_batchnorm(model)
    return phase_tail(folded, taps=not int8) or transposed_forms(folded) or folded


def to_onnx(model: nn.Module, cfg: NetConfig, dest: str | os.PathLike, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``model`` (as it is: eval or not) to ONNX ``z -> image`` with a dynamic batch axis."""
    example = torch.zeros(2, cfg.latent_dim)  # batch > 1, so no size-1 specialisation
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), input_names=["z"], output_names=["image"], opset_version=opset,
            dynamic_shapes={"z": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False)
    program.save(str(dest))


def write_metadata(path: str | os.PathLike, meta: dict[str, str]) -> None:
    """Replace the file's ``metadata_props`` with ``meta`` (string keys and values), atomically."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def check_graph(path: str | os.PathLike) -> None:
    """Refuse graphs with randomness or training-only ops."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    bad = ops & FORBIDDEN_OPS
    if bad:
        raise ParityError(f"the graph holds training-only or random ops: {', '.join(sorted(bad))}", {})
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and any(a.name == "training_mode" and a.i for a in node.attribute):
            raise ParityError("the graph holds a training-mode BatchNormalization", {})


def base_metadata(d: Described, opset: int) -> dict[str, str]:
    c = d.cfg
    return {
        "dcgan_deploy.format": FORMAT,
        "dcgan_deploy.version": __version__,
        "architecture": c.arch,
        "latent_dim": str(c.latent_dim),
        "latent_prior": c.latent_prior,
        "channels": str(c.channels),
        "height": str(c.image_size),
        "width": str(c.image_size),
        "value_range": "[-1, 1]",
        "dataset": d.dataset,
        "train_step": str(d.train_step),
        "torch_version": torch.__version__,
        "opset": str(opset),
        "net_config": json.dumps(c.to_dict()),
    }


# ---- the whole export ------------------------------------------------------------------
def export(ckpt: str | os.PathLike, out: str | os.PathLike | None = None, arch: str | None = None,
           opset: int = DEFAULT_OPSET, fp16: bool = False, int8: bool = False, triton: str | os.PathLike | None = None,
           thresholds: parity.Thresholds | None = None, name: str | None = None) -> dict:
    """Checkpoint -> ``out`` (default ``exports/<name>.onnx``), proven by the parity gate.

    Returns ``{"model": path, "report": path, "parity": report, ...}``. On a parity
    miss raises ``ParityError`` (with the report) and nothing new is left at ``out``.
    """
    d = describe(ckpt, arch)
    name = name or (Path(out).stem if out else d.name)
    out = Path(out) if out else Path("exports") / f"{name}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    report_path = out.with_suffix(".parity.json")
    meta = base_metadata(d, opset)
    result = {"model": str(out), "report": str(report_path), "name": name, "source": d.source, "notes": d.notes}
    with atomic_path(out) as tmp:
        to_onnx(deploy_form(d.model), d.cfg, tmp, opset)
        check_graph(tmp)
        write_metadata(tmp, meta)
        report = parity.run_gate(d.model, tmp, thresholds)
        result["parity"] = report
        if not report["passed"]:
            write_report(report_path, result)
            raise ParityError(f"parity gate failed; {out} was not written", report)
        write_metadata(tmp, {**meta, "parity": json.dumps(parity.summary(report))})
    write_report(report_path, result)
    if fp16:
        result["fp16"] = export_fp16(d, out, meta, thresholds or parity.Thresholds())
    if int8:
        result["int8"] = export_int8(d, out, meta, thresholds or parity.Thresholds(), opset)
    if triton:
        from .triton import write_model_repository
        result["triton"] = str(write_model_repository(out, Path(triton), name))
    return result


def write_report(path: Path, result: dict) -> None:
    """``<name>.parity.json``: what was exported from what, and the full gate report."""
    summary = {k: v for k, v in result.items() if k != "parity"}
    write_bytes(path, (json.dumps({"result": summary, "parity": result["parity"]}, indent=2) + "\n").encode())


def export_fp16(d: Described, fp32_path: Path, meta: dict[str, str], thresholds: parity.Thresholds) -> dict:
    """A float16 variant (float32 inputs and outputs) beside the fp32 file, with its own gate."""
    from onnxconverter_common import float16

    out = fp32_path.with_name(fp32_path.stem + "-fp16.onnx")
    model = float16.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    has_cuda = parity.CUDA in parity.providers_to_check()
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
        write_metadata(tmp, {**meta, "precision": "float16"})
        try:
            report = parity.run_gate(d.model, tmp, thresholds, providers=[parity.CUDA if has_cuda else parity.CPU],
                                     min_psnr=thresholds.fp16_min_psnr)
        except Exception as e:  # onnxruntime's CPU build may lack float16 kernels for some ops
            report = {"passed": None, "failures": [f"could not run the fp16 model on CPU: {str(e)[:200]}"]}
        if report["passed"] is False:
            raise ParityError(f"fp16 parity gate failed; {out} was not written", report)
        report["verified"] = has_cuda
        if not has_cuda:
            report["reason"] = "no CUDA provider here to check the fp16 model on" + (
                " (it passed the fp16 gate on CPU)" if report["passed"] else "")
        write_metadata(tmp, {**meta, "precision": "float16", "parity": json.dumps(parity.summary(report))})
    result = {"model": str(out), "report": str(out.with_suffix(".parity.json")), "precision": "float16",
              "parity": report}
    write_report(out.with_suffix(".parity.json"), result)
    return result


# Calibration latents for the int8 variant: seeds disjoint from the parity gate's (0, 1, 2).
INT8_CALIBRATION_SEEDS = tuple(range(1000, 1008))
INT8_CALIBRATION_BATCH = 64


def quantize_int8(fp32_path: str | os.PathLike, dest: str | os.PathLike, cfg: NetConfig,
                  activations: str = "uint8") -> None:
    """Static int8 quantization of an fp32 export (onnxruntime, QDQ format).

    Weights int8 per output channel; activations ``uint8`` or ``int8`` with MinMax ranges
    calibrated on the model's own prior (``INT8_CALIBRATION_SEEDS`` x ``INT8_CALIBRATION_BATCH``
    latents through the seed -> latent contract). Deterministic: the same file, the same result.
    """
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .latent import latents

    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations must be uint8 or int8, got {activations!r}")

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"z": latents(INT8_CALIBRATION_BATCH, seed, cfg.latent_dim, cfg.latent_prior)}
                               for seed in INT8_CALIBRATION_SEEDS])

        def get_next(self):
            return next(self.feeds, None)

    root = logging.getLogger()  # the quantizer logs per-tensor chatter on the root logger
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"  # shapes inferred and graph simplified, as the quantizer wants it
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            # every op the quantizer knows (its default) except MatMul: the export's MatMuls only place
            # values (forms.interleave), and re-quantizing what they place would add a rounding
            ops = sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - {"MatMul"})
            quantize_static(str(pre), str(dest), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                            op_types_to_quantize=ops,
                            weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8)
    finally:
        root.setLevel(level)


def export_int8(d: Described, fp32_path: Path, meta: dict[str, str], thresholds: parity.Thresholds,
                opset: int = DEFAULT_OPSET) -> dict:
    """An int8 variant for the CPU beside the fp32 file, gated on PSNR against PyTorch fp32."""
    import tempfile

    out = fp32_path.with_name(fp32_path.stem + "-int8.onnx")
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory() as work:
        source = Path(work) / "int8-form.onnx"  # float32, in the form that quantizes best
        to_onnx(deploy_form(d.model, int8=True), d.cfg, source, opset)
        quantize_int8(source, tmp, d.cfg)
        write_metadata(tmp, {**meta, "precision": "int8"})
        report = precision_gate(d.model, tmp, thresholds, "int8")
        if not report["passed"]:
            raise ParityError(f"int8 parity gate failed; {out} was not written", report)
        write_metadata(tmp, {**meta, "precision": "int8", "parity": json.dumps(parity.summary(report))})
    result = {"model": str(out), "report": str(out.with_suffix(".parity.json")), "precision": "int8",
              "parity": report}
    write_report(out.with_suffix(".parity.json"), result)
    return result


def precision_gate(model: nn.Module, path, thresholds: parity.Thresholds, precision: str) -> dict:
    """The gate a file of ``precision`` is held to: float32 max abs error on every provider;
    float16 and int8 (on the CPU, where it is meant to run) a minimum PSNR."""
    if precision == "int8":
        return parity.run_gate(model, path, thresholds, providers=[parity.CPU], min_psnr=thresholds.int8_min_psnr)
    if precision == "float16":
        return parity.run_gate(model, path, thresholds, min_psnr=thresholds.fp16_min_psnr)
    return parity.run_gate(model, path, thresholds)


def verify(model_path: str | os.PathLike, ckpt: str | os.PathLike, arch: str | None = None,
           thresholds: parity.Thresholds | None = None) -> dict:
    """Re-run the parity gate on an existing ONNX file against its checkpoint.

    A reduced-precision variant (metadata ``precision``: float16, int8) gets the PSNR gate it
    was exported under, on the CPU for int8.
    """
    from .runtime import Generator as Runtime

    d = describe(ckpt, arch)
    precision = Runtime.load(model_path, device="cpu").metadata.get("precision", "float32")
    return precision_gate(d.model, model_path, thresholds or parity.Thresholds(), precision)
