"""Does the export's form beat the plain graph? An interleaved A/B on the CPU.

    python benchmarks/export_form_ab.py [--arch mnist-dcgan] [--rounds 10] [--threads 2] [--batch-size 64]

Exports the same generator twice — BatchNorm folded only ("plain": the layers as trained)
and as `dcgan-deploy export` writes it (``deploy_form``: for the conv-upsample nets the last
upsample and the two convolutions after it as ``forms.PhaseTail``, for the transposed-convolution
nets ``forms.transposed_forms``) — and times the two models in
alternating rounds of --seconds each (``bench_model``, as `dcgan-deploy bench` times), so
that this VM's drift hits both alike. Prints each round's ratio and the median.
mnist-dcgan uses the bundled model's weights, other architectures stand-in weights.
"""
import argparse
import json
import statistics
import tempfile
from pathlib import Path

from dcgan_deploy.bench import bench_model
from dcgan_deploy.checkpoint import Checkpoint
from dcgan_deploy.export import DEFAULT_OPSET, base_metadata, deploy_form, fold_batchnorm, to_onnx
from dcgan_deploy.modelfile import write_metadata

from common import trained_like
from weights import recorded_model



def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mnist-dcgan")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=1.5)
    args = ap.parse_args()
    g = (recorded_model("mnist") if args.arch == "mnist-dcgan"
         else trained_like(args.arch))
    rates = {"plain": [], "export": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, model in (("plain", fold_batchnorm(g)), ("export", deploy_form(g))):
            paths[name] = Path(tmp) / f"{name}.onnx"
            to_onnx(model, g.cfg, paths[name])
            write_metadata(paths[name], base_metadata(Checkpoint(g, g.cfg, g.cfg.arch), DEFAULT_OPSET))
        for _ in range(args.rounds):
            for name, path in paths.items():
                row = bench_model(path, "cpu", [args.batch_size], args.threads, args.seconds, rounds=1)[0]
                rates[name].append(row["images_per_s"])
    for name, r in rates.items():
        print(f"{args.arch} {name:<10} img/s: median {statistics.median(r):7.1f}  (min {min(r):.1f}, max {max(r):.1f})")
    ratios = [b / a for a, b in zip(rates["plain"], rates["export"])]
    print(f"export / plain per round: {' '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.3f}")
    print(json.dumps({"arch": args.arch, "images_per_s": rates, "export_vs_plain": statistics.median(ratios)}))


if __name__ == "__main__":
    main()
