"""Does int8 (onnxruntime static quantization) beat the float32 ceiling on the CPU, and at what cost?

    python benchmarks/int8_quant.py [--threads 2] [--batch-size 64] [--seconds 3]

For each architecture: the fp32 export (as `dcgan-deploy export` writes it: ``deploy_form``),
and int8 variants made as `dcgan-deploy export --int8` makes them: from the int8 form
(``export.int8_form``, which differs for the conv-upsample nets' tail) with
``onnxruntime.quantization.quantize_static`` calibrated on the model's own latents,
seeds 1000-1007 x 64, MinMax; QDQ format, int8 weights per output channel), with the
activations as uint8 (the export's choice) or int8.
They are timed side by side in one process, in alternating rounds (--rounds; each variant's
speed-up is the median of its per-round ratios to fp32), and their images are compared with the fp32
images for the same 256 latents (PSNR over [-1, 1], share of changed uint8 pixels).

mnist-dcgan uses the bundled trained model's weights; the others use stand-in
weights with realistic BatchNorm statistics (speed does not depend on the values; the
image error of random weights is only indicative). A variant would ship only if it is at
least 1.5x faster than fp32 with PSNR >= 30 dB (BENCHMARKS.md).
"""
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

from dcgan_deploy import cpu
from dcgan_deploy.checkpoint import Checkpoint
from dcgan_deploy.export import base_metadata, deploy_form, int8_form, quantize_int8, to_onnx
from dcgan_deploy.modelfile import write_metadata
from dcgan_deploy.nets import NetConfig
from dcgan_deploy.images import compare_images as compare
from dcgan_deploy.runtime import Generator

from ceiling import ceiling_summary, timed_with_ceiling
from common import archs, speed_args, trained_like
from weights import recorded_model

SHIP_SPEEDUP, SHIP_PSNR = 1.5, 30.0


def exported_forms(arch: str, tmp: Path, smoke: bool = False) -> tuple[Path, Path]:
    """(the fp32 export, the float32 graph its int8 variants are quantized from)."""
    g = (recorded_model("mnist") if arch == "mnist-dcgan" and not smoke
         else trained_like(arch, smoke))
    paths = []
    for name, form in (("fp32", deploy_form(g)), ("int8-form", int8_form(g))):
        path = tmp / f"{arch}-{name}.onnx"
        to_onnx(form, g.cfg, path)
        write_metadata(path, base_metadata(Checkpoint(g, g.cfg, arch), 18))
        paths.append(path)
    return paths[0], paths[1]


def quantize(src: Path, dest: Path, activations: str, weight_bits: int = 7) -> None:
    """`dcgan-deploy export --int8`'s quantization, activations and weight bits as given; metadata kept."""
    meta = Generator.load(src, device="cpu").metadata
    quantize_int8(src, dest, NetConfig.from_dict(json.loads(meta["net_config"])), activations, weight_bits)
    write_metadata(dest, meta)


def main():
    args = speed_args(__doc__)
    warnings.simplefilter("ignore")  # the int8 files carry no parity report; that is the point here
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in archs(("dcgan64", "mnist-dcgan", "mnist-dcgan-wide", "mnist-mlp", "mnist-convt"), args.smoke):
            fp32, source = exported_forms(arch, tmp, args.smoke)
            variants = {"fp32": fp32}
            for name, act, bits in (("int8_u8act", "uint8", 7), ("int8_8bit_w", "uint8", 8), ("int8_s8act", "int8", 7)):
                variants[name] = tmp / f"{arch}-{name}.onnx"
                quantize(source, variants[name], act, bits)
            ref_gen = Generator.load(fp32, device="cpu", threads=args.threads)
            z = ref_gen.latents(256, 0)
            reference = ref_gen.run(z)
            # the variants in alternating rounds (each with its own ceiling), so that drift hits all alike
            timed = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, path in variants.items():
                    timed[name] += timed_with_ceiling(path, args.threads, [args.batch_size], args.seconds / args.rounds,
                                                      rounds=1)
            for name, path in variants.items():
                err = compare(reference, Generator.load(path, device="cpu", threads=args.threads).run(z))
                r = timed[name]
                speedup = statistics.median(a["images_per_s"] / b["images_per_s"] for a, b in zip(r, timed["fp32"]))
                ships = bool(name != "fp32" and speedup >= SHIP_SPEEDUP and err["psnr"] >= SHIP_PSNR)
                med = {k: statistics.median(x[k] for x in r) for k in ("images_per_s", "p50_ms", "gflops", "share_of_ceiling",
                                                                      "share_of_best_ceiling", "ceiling_gflops")}
                rows.append({"arch": arch, "variant": name, "weights": "trained" if arch == "mnist-dcgan" else "stand-in",
                             "images_per_s": round(med["images_per_s"], 1), "p50_ms": med["p50_ms"],
                             "speedup_vs_fp32": round(speedup, 2), "gflops": med["gflops"],
                             "share_of_fp32_ceiling": round(med["share_of_ceiling"], 4),
                             "share_of_best_fp32_ceiling": round(med["share_of_best_ceiling"], 4),
                             "ceiling_gflops": med["ceiling_gflops"], "ceiling_best_gflops": max(x["ceiling_best_gflops"] for x in r),
                             "psnr_db": round(err["psnr"], 1), "changed": round(err["changed"], 4),
                             "size_mb": round(path.stat().st_size / 2**20, 2), "meets_ship_bar": ships})
    ceiling = ceiling_summary(rows, args.threads)  # measured in every row's rounds
    print(f"float32 matmul ceiling: median {ceiling['gflops']:.1f} GFLOP/s ({ceiling['backend']}, {args.threads} threads; "
          f"rows {ceiling['range'][0]}-{ceiling['range'][1]}, best product {ceiling['best_gflops']})")
    for row in rows:
        print(f"{row['arch']:<17} {row['variant']:<12} {row['images_per_s']:9.1f} img/s  x{row['speedup_vs_fp32']:4.2f} vs fp32  "
              f"{100 * row['share_of_fp32_ceiling']:4.0f}% of ceiling  "
              f"PSNR {row['psnr_db']:6.1f} dB  changed {100 * row['changed']:5.1f}%  "
              f"{row['size_mb']:6.2f} MB  {'ships' if row['meets_ship_bar'] else ''}")
    print(json.dumps({"cpu": cpu.features(), "threads": args.threads, "batch": args.batch_size, "ceiling": ceiling, "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
