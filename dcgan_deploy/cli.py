"""The command line: a thin edge over the library, and the only place that knows exit codes."""
from __future__ import annotations

import functools
import json
import sys
import time
import warnings
from pathlib import Path

import click

from . import __version__

MAX_FRAMES = 1000


def friendly_errors(fn):
    """Turn the library's errors into one line on stderr and a non-zero exit."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .runtime import ModelError
        try:
            return fn(*args, **kwargs)
        except (ModelError, ValueError, OSError) as e:
            raise click.ClickException(str(e)) from None
    return wrapper


def load_generator(model, device, threads=None):
    from .runtime import Generator, UnverifiedModelWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnverifiedModelWarning)
        gen = Generator.load(model, device=device, threads=threads)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    return gen


def progress(total: int, desc: str):
    """A tqdm bar on stderr for long requests, and only when stderr is a terminal."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=total < 2048 or not sys.stderr.isatty())


def counted(chunks, bar):
    for chunk in chunks:
        bar.update(len(chunk))
        yield chunk


model_option = click.option("-m", "--model", default=None,
                            help="A .onnx file or a bundled model name (default: the bundled default).")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                             help="auto = CUDA when onnxruntime's CUDA provider is really active, else CPU.")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="onnxruntime intra-op threads (default: all cores).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dcgan-deploy")
def main():
    """Generate images from DCGAN generators exported to ONNX.

    \b
    Example:
        dcgan-deploy generate -n 64 -o grid.png
    """


@main.command()
@model_option
@click.option("-n", "count", type=int, default=64, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=None, help="Seed for the latents (default: random, printed).")
@click.option("-o", "--out", "out", default="grid.png", show_default=True,
              help="*.png: one grid; *.npy: uint8 [n,H,W,C] array; a folder or path ending in '/': one PNG each.")
@device_option
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per onnxruntime call.")
@click.option("--latents", "latents_file", type=click.Path(dir_okay=False), default=None,
              help="A float32 [n, latent_dim] .npy of latents to render instead of a seed (e.g. from the demo).")
@threads_option
@friendly_errors
def generate(model, count, seed, out, device, batch_size, latents_file, threads):
    """Generate N images from a seed.

    The same seed gives the same images on every backend, and the first k of n
    images equal `-n k`.

    \b
    Examples:
        dcgan-deploy generate -n 64 --seed 7 -o grid.png
        dcgan-deploy generate -n 1000000 -o digits.npy
        dcgan-deploy generate -n 100 -o samples/
        dcgan-deploy generate --latents latent.npy -o edited.png
    """
    import numpy as np

    from .images import check_grid_size, grid, save_png, to_uint8, write_npy, write_pngs
    from .latent import check_count, check_seed, random_seed

    count, batch_size = check_count(count, "-n"), check_count(batch_size, "--batch-size")
    kind = output_kind(out)
    gen = load_generator(model, device, threads)
    if latents_file:
        z = load_latents(latents_file)
        count, source = len(z), f"latents from {latents_file}"
        images = (to_uint8(gen.run(z[i:i + batch_size])) for i in range(0, count, batch_size))
    else:
        seed = random_seed() if seed is None else check_seed(seed)
        source = f"seed {seed}"
        images = gen.iter_generate(count, seed, batch_size)
    h, w, c = gen.image_shape
    if kind == "grid":
        check_grid_size(count, h, w)
    with progress(count, "generating") as bar:
        chunks = counted(images, bar)
        if kind == "grid":
            save_png(grid(np.concatenate(list(chunks))), out)
        elif kind == "npy":
            write_npy(chunks, out, (count, h, w, c))
        else:
            write_pngs(chunks, out, count)
    click.echo(f"wrote {count} image(s) to {out} ({source}, {gen.provider})", err=True)


def load_latents(path: str):
    import numpy as np
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None
    if z.ndim == 1:
        z = z[None]
    return z  # shape, dtype and finiteness are checked by Generator.run


def output_kind(out: str) -> str:
    if out.endswith("/") or Path(out).is_dir():
        return "dir"
    suffix = Path(out).suffix.lower()
    if suffix == ".png":
        return "grid"
    if suffix == ".npy":
        return "npy"
    raise ValueError(f"cannot tell the output type of {out!r}: use *.png (grid), *.npy (array) "
                     "or a folder ending in '/' (one PNG per image)")


@main.command()
@model_option
@click.option("--seeds", default="0,1", show_default=True, help="Comma-separated seeds to pass through, in order.")
@click.option("--frames", type=int, default=16, show_default=True, help="Frames per pair of seeds.")
@click.option("--method", type=click.Choice(["slerp", "lerp"]), default="slerp", show_default=True)
@click.option("-o", "--out", default="interpolation", show_default=True,
              help="Output stem: writes STEM.png (strip) and STEM.gif (animation).")
@click.option("--duration", type=click.IntRange(min=10), default=80, show_default=True, help="GIF frame time in ms.")
@device_option
@friendly_errors
def interpolate(model, seeds, frames, method, out, duration, device):
    """Interpolate through the latents of several seeds.

    Each seed's latent is its first image's latent (`generate -n 1 --seed S`).

    \b
    Example:
        dcgan-deploy interpolate --seeds 3,14,15 --frames 24 -o walk
        # -> walk.png (all frames in a strip) and walk.gif
    """
    import numpy as np

    from .images import grid, save_gif, save_png, to_uint8
    from .latent import check_count, check_seed, path

    try:
        seed_list = [check_seed(int(s)) for s in seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated non-negative integers, got {seeds!r}") from None
    if len(seed_list) < 2:
        raise ValueError("--seeds needs at least two seeds")
    frames = check_count(frames, "--frames")
    total = (len(seed_list) - 1) * frames + 1
    if total > MAX_FRAMES:
        raise ValueError(f"{total} frames requested; the limit is {MAX_FRAMES}")
    stem = Path(out[:-4] if out.lower().endswith((".png", ".gif")) else out)
    gen = load_generator(model, device)
    z = path([gen.latents(1, s)[0] for s in seed_list], frames, method)
    images = np.concatenate([to_uint8(gen.run(z[i:i + 64])) for i in range(0, len(z), 64)])
    strip, anim = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".gif")
    save_png(grid(images, nrow=min(len(images), frames + 1)), strip)
    save_gif(images, anim, duration_ms=duration, scale=max(1, 128 // gen.height))
    click.echo(f"wrote {len(images)} frames to {strip} and {anim}", err=True)


@main.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@device_option
@friendly_errors
def info(model, as_json, device):
    """Show a model's metadata, parity summary and execution providers.

    \b
    Examples:
        dcgan-deploy info                 # the bundled default
        dcgan-deploy info exports/mnist.onnx --json
    """
    gen = load_generator(model, device)
    facts = gen.describe()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    click.echo(f"model      {facts['path']}")
    for key, value in sorted(facts["metadata"].items()):
        click.echo(f"  {key:<24} {value}")
    parity = facts["parity"]
    click.echo("parity     " + (summarize_parity(parity) if parity else "no parity report in this file"))
    if "evaluation" in facts:
        e = facts["evaluation"]
        click.echo(f"quality    FID {e['fid']} (real floor {e['fid_floor']}), KID {e['kid']} (floor {e['kid_floor']})"
                   + (f", classifier score {e['score']} (real {e['real_score']})" if "score" in e else "")
                   + (f", smallest class {e['min_class_share']:.1%}" if "min_class_share" in e else "")
                   + f"; n={e['n']}, features: {e['extractor']}")
    click.echo(f"providers  active: {', '.join(facts['providers']['active'])}; "
               f"available: {', '.join(facts['providers']['available'])}")


@main.command()
@click.option("-m", "--model", "models", multiple=True,
              help="A .onnx file to offer besides the bundled models; repeat for several.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True)
@click.option("--share", is_flag=True, help="Ask Gradio for a public share link.")
@click.option("--auth", default=None, help="USER:PASS required to open the page.")
@device_option
@friendly_errors
def demo(models, host, port, share, auth, device):
    """Explore a generator's latent space in the browser (Gradio).

    Seed grids, interpolation between seeds, and latent editing, on the runtime
    (no torch). Binds to 127.0.0.1 unless told otherwise.

    \b
    Example:
        dcgan-deploy demo                     # http://127.0.0.1:7860
        dcgan-deploy demo -m exports/mine.onnx --host 0.0.0.0 --auth me:secret
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise click.ClickException("the demo needs Gradio: pip install 'dcgan-deploy[demo]'") from None
    from . import bundled
    from .demo import Demo, launch_warnings, parse_auth

    credentials = parse_auth(auth)
    shipped = bundled.bundled_models()
    given = {}
    for path in map(bundled.resolve, models):
        given[path.stem if shipped.get(path.stem, path) == path else str(path)] = path
    # the models named on the command line come first: the page opens on the first of them
    app = Demo({**given, **{k: v for k, v in shipped.items() if v not in given.values()}}, device=device)
    for name in list(given) or list(shipped)[:1]:  # fail now, not in the browser, if a model is unusable
        app.generator(name)
    for warning in launch_warnings(host, share, auth):
        click.echo(f"warning: {warning}", err=True)
    app.build().launch(server_name=host, server_port=port, share=share, auth=credentials, show_error=True,
                       footer_links=[])


@main.command()
@click.argument("model", required=False)
@click.option("--data", default="mnist-sample", show_default=True, help="Real images to compare with (any train source).")
@click.option("-n", "count", type=int, default=2500, show_default=True, help="Generated images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--features", default=None,
              help="ONNX feature extractor (image [N,C,H,W] in [-1,1] -> features[, probs]), or the FID "
                   "Inception weights file of pytorch-fid / torch-fidelity (.pth; converted once, needs torch); "
                   "default: mnist-classifier.")
@click.option("--ckpt", default=None, type=click.Path(dir_okay=False),
              help="Also measure deployment drift: PyTorch samples of this checkpoint vs the ONNX samples (needs torch).")
@click.option("--save", is_flag=True, help="Store the summary in the model's metadata (shown by `info`; needs onnx).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def evaluate(model, data, count, seed, features, ckpt, save, as_json):
    """Measure image quality: FID, KID, classifier score and class coverage.

    Generated images are compared with the real held-out half of --data, beside the
    floor (the same metrics between two disjoint real halves). FID depends on the
    sample count and the feature extractor; the report states both.

    \b
    Example:
        dcgan-deploy evaluate                       # the bundled model, n = 2500
        dcgan-deploy evaluate exports/mine.onnx --ckpt runs/mine/train_state.pt --json
    """
    from . import evaluate as ev
    from .latent import check_count, check_seed

    report = ev.evaluate(model, data=data, n=check_count(count, "-n"), seed=check_seed(seed), features=features)
    if ckpt:
        need_torch("--ckpt drift")
        report["drift"] = ev.drift(report["model"], ckpt, n=min(count, 1000), seed=seed, features=features)
    if save:
        need_torch("--save")
        from .export import write_metadata
        from .runtime import Generator
        write_metadata(report["model"], {**Generator.load(report["model"]).metadata,
                                         "evaluation": json.dumps(ev.summary(report))})
    if as_json:
        click.echo(ev.to_json(report))
        return
    click.echo(ev.format_report(report))
    if ckpt:
        d = report["drift"]
        click.echo(f"drift      PyTorch vs ONNX, {d['n']} images: FID {d['fid']:.4f}, KID {d['kid']:.5f}, "
                   f"{d['uint8_pixels_changed']:.4%} of uint8 pixels changed")


@main.command()
@click.option("-m", "--model", "models", multiple=True, help="Model(s) to measure (default: the bundled default).")
@device_option
@click.option("--batch-size", "batch_sizes", default="1,8,64,256", show_default=True, help="Comma-separated batch sizes.")
@threads_option
@click.option("--seconds", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              help="onnxruntime's timed runs per batch size, after the first run (PyTorch and the IO-bound runs "
                   "get as long, the ceiling half), split into 5 alternating rounds.")
@click.option("--ckpt", type=click.Path(dir_okay=False), default=None,
              help="The model's checkpoint: also time the same generator in PyTorch eager, side by side (one model).")
@click.option("--compile", "compile_", is_flag=True,
              help="With --ckpt: also torch.compile the generator (inductor; compiled once per batch size, which "
                   "takes seconds to a minute) and time it in the same rounds.")
@click.option("--io-binding", "bound", is_flag=True,
              help="Also time onnxruntime with IO binding (latents and images stay in the device's memory: no "
                   "copies to or from the host) in the same rounds.")
@click.option("--cuda-graph", is_flag=True,
              help="Also time the model replayed as a CUDA graph (IO-bound; one capture per batch size). "
                   "Needs the CUDA provider (onnxruntime-gpu; --device cuda or auto).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def bench(models, device, batch_sizes, threads, seconds, ckpt, compile_, bound, cuda_graph, as_json):
    """Measure generation speed against a float32 matrix-product ceiling.

    Session creation, first run, images/s, latency p50/p95/p99, GFLOP/s from the
    graph's multiply-adds, and its share of a matrix-product rate measured in the
    same rounds with the same threads (ceil%; best%: against the fastest single
    product). With --ckpt, PyTorch eager on the same latents in the same rounds
    (and with --compile, torch.compile too), on the model's device. On a GPU,
    --io-binding and --cuda-graph time what a device-resident caller gets.

    \b
    Example:
        dcgan-deploy bench --threads 2 --batch-size 64
        dcgan-deploy bench -m exports/mnist.onnx --ckpt training/mnist/generator.safetensors --compile --json
        dcgan-deploy bench --device cuda --batch-size 256,4096,32768 --io-binding --cuda-graph
    """
    from . import bench as benchmark

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        raise ValueError(f"--batch-size must be comma-separated integers, got {batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError("batch sizes must be at least 1")
    if ckpt and len(models) > 1:
        raise ValueError("--ckpt compares one model with its checkpoint; give one -m")
    if compile_ and not ckpt:
        raise ValueError("--compile compiles the PyTorch generator: give its checkpoint with --ckpt")
    if cuda_graph and device == "cpu":
        raise ValueError("--cuda-graph needs --device cuda (or auto with onnxruntime-gpu)")
    if ckpt:
        need_torch("--ckpt")
    result = benchmark.run(list(models) or [None], device, sizes, threads, seconds, ckpt, compile_, bound, cuda_graph)
    click.echo(json.dumps(result, indent=2) if as_json else benchmark.format_table(result))


def need_torch(what: str):
    """Import the torch side, or fail with a one-line install hint."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException(f"{what} needs PyTorch: pip install 'dcgan-deploy[train]' "
                                   "(install torch first to choose its build)") from None


# Exit codes beyond click's 1 (error) and 2 (usage).
EXIT_DIVERGED = 3
EXIT_PARITY = 4


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this folder (its recipe is in its checkpoint).")
@click.option("--data", default=None, help="mnist-sample, synthetic[:N], a folder of images, MNIST IDX folder, or .npz.")
@click.option("--steps", type=int, default=None, help="Total steps of the run (with --resume: continue up to this step).")
@click.option("--batch-size", type=int, default=None, help="Images per step (per process under torchrun).")
@click.option("--out", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder (default: runs/<recipe name>).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--seed", type=int, default=None)
@friendly_errors
def train(recipe, resume_dir, data, steps, batch_size, run_dir, device, seed):
    """Train a generator from a recipe (a TOML file in training/).

    Writes train_state.pt, generator.safetensors, log.jsonl and sample grids to the
    run folder. Under `torchrun --nproc_per_node N -m dcgan_deploy train ...` it
    trains data-parallel (gloo on CPU, NCCL on GPU). Exit code 3 means the run
    diverged (the last good checkpoint is kept).

    \b
    Examples:
        dcgan-deploy train training/mnist-dcgan.toml --out runs/mnist
        dcgan-deploy train --resume runs/mnist --steps 8000
    """
    need_torch("train")
    import logging

    from .train import DivergenceError, TrainConfig, Trainer

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        if resume_dir:
            if recipe or data or batch_size or seed is not None:
                raise ValueError("with --resume only --steps and --device may be given (the recipe is in the checkpoint)")
            trainer = Trainer.resume(resume_dir, progress=sys.stderr.isatty(), steps=steps, device=device)
        else:
            if not recipe:
                raise ValueError("give a RECIPE file, or --resume RUN_DIR")
            cfg = TrainConfig.from_file(recipe, data=data, steps=steps, batch_size=batch_size, device=device, seed=seed)
            run_dir = run_dir or str(Path("runs") / Path(recipe).stem)
            if (Path(run_dir) / "train_state.pt").exists():
                raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick --out")
            trainer = Trainer(cfg, run_dir, progress=sys.stderr.isatty())
        start = time.perf_counter()
        try:
            record = trainer.run()
        except BaseException:
            trainer.dist.close(ok=False)
            raise
        trainer.dist.close()
    except DivergenceError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(EXIT_DIVERGED)
    if trainer.dist.main:
        click.echo(f"trained {trainer.cfg.arch} to step {trainer.step} in {time.perf_counter() - start:.0f}s "
                   f"(d_loss {record.get('d_loss')}, g_loss {record.get('g_loss')}); run folder: {trainer.run_dir}",
                   err=True)


def threshold_options(fn):
    fn = click.option("--max-abs-cpu", type=float, default=None, help="CPU limit on max abs error (default 1e-4).")(fn)
    fn = click.option("--max-abs-cuda", type=float, default=None, help="CUDA limit on max abs error (default 2e-3).")(fn)
    fn = click.option("--max-changed-cuda", type=float, default=None,
                      help="CUDA limit on the share of uint8 pixels changed (default 0.001).")(fn)
    return fn


def thresholds_from(max_abs_cpu, max_abs_cuda, max_changed_cuda):
    from .parity import Thresholds
    t = Thresholds()
    for name, value in (("cpu_max_abs", max_abs_cpu), ("cuda_max_abs", max_abs_cuda), ("cuda_changed", max_changed_cuda)):
        if value is not None:
            if not value >= 0:
                raise click.BadParameter(f"thresholds must be non-negative, got {value}")
            setattr(t, name, value)
    return t


@main.command()
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("-o", "--out", default=None, help="Output .onnx (default: exports/<name>.onnx).")
@click.option("--arch", default=None, help="Architecture of a bare state dict (e.g. dcgan64 for netG_epoch_N.pth).")
@click.option("--opset", type=click.IntRange(min=17), default=18, show_default=True)
@click.option("--fp16", is_flag=True, help="Also write a float16 variant for CUDA (<name>-fp16.onnx).")
@click.option("--int8", is_flag=True,
              help="Also write an int8 variant for the CPU (<name>-int8.onnx; static quantization calibrated on "
                   "the model's own latents, gated at PSNR >= 30 dB against PyTorch).")
@click.option("--triton", type=click.Path(file_okay=False), default=None,
              help="Also write a Triton model-repository entry DIR/<name>/{config.pbtxt,1/model.onnx}.")
@threshold_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly_errors
def export(ckpt, out, arch, opset, fp16, int8, triton, max_abs_cpu, max_abs_cuda, max_changed_cuda, as_json):
    """Export a checkpoint to ONNX and prove parity with PyTorch.

    CKPT is a trainer's train_state.pt or generator.safetensors, or a bare
    generator state dict with --arch. The model is written only if the parity gate
    passes; otherwise the exit code is 4 and the report says which numbers missed.

    \b
    Examples:
        dcgan-deploy export runs/mnist/train_state.pt -o exports/mnist.onnx
        dcgan-deploy export netG_epoch_24.pth --arch dcgan64 --fp16 --triton model_repository
        dcgan-deploy export training/mnist/generator.safetensors -o exports/mnist.onnx --int8
    """
    need_torch("export")
    from .export import ParityError
    from .export import export as run_export
    from .parity import format_report

    thresholds = thresholds_from(max_abs_cpu, max_abs_cuda, max_changed_cuda)
    try:
        result = run_export(ckpt, out, arch=arch, opset=opset, fp16=fp16, int8=int8, triton=triton,
                            thresholds=thresholds)
    except ParityError as e:
        report_gate(e.report, as_json, error=str(e))
        sys.exit(EXIT_PARITY)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(format_report(result["parity"]))
    click.echo(f"wrote {result['model']} and {result['report']}")
    if "fp16" in result:
        p = result["fp16"]["parity"]
        click.echo(f"wrote {result['fp16']['model']} (fp16: " + ("verified on CUDA" if p.get("verified")
                                                                  else "UNVERIFIED: " + p.get("reason", "")) + ")")
    if "int8" in result:
        w = result["int8"]["parity"]["worst"]
        click.echo(f"wrote {result['int8']['model']} (int8: PSNR >= {w['psnr']:.1f} dB against PyTorch fp32, "
                   f"{w['changed']:.1%} of uint8 pixels changed)")
    if "triton" in result:
        click.echo(f"wrote Triton model repository entry {result['triton']}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--arch", default=None, help="Architecture of a bare state dict.")
@threshold_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def verify(model, ckpt, arch, max_abs_cpu, max_abs_cuda, max_changed_cuda, as_json):
    """Re-run the parity gate on an existing ONNX file against its checkpoint.

    Exit code 0 when it passes, 4 when it misses.

    \b
    Example:
        dcgan-deploy verify exports/mnist.onnx runs/mnist/train_state.pt --json
    """
    need_torch("verify")
    from .export import verify as run_verify

    report = run_verify(model, ckpt, arch=arch, thresholds=thresholds_from(max_abs_cpu, max_abs_cuda, max_changed_cuda))
    report_gate(report, as_json)
    if not report["passed"]:
        sys.exit(EXIT_PARITY)


def report_gate(report: dict, as_json: bool, error: str | None = None) -> None:
    from .parity import format_report
    if as_json:
        click.echo(json.dumps({"error": error, **report} if error else report, indent=2))
    elif report.get("checks"):
        click.echo(format_report(report))
    if error:
        detail = "" if report.get("checks") or not report.get("failures") else ": " + "; ".join(report["failures"])
        click.echo(f"Error: {error}{detail}", err=True)


def summarize_parity(parity: dict) -> str:
    status = "PASSED" if parity.get("passed") else "FAILED"
    worst = parity.get("worst", {})
    parts = [f"{k}={v:.3g}" for k, v in worst.items() if isinstance(v, (int, float))]
    return f"{status} on {', '.join(parity.get('providers', []))} " + " ".join(parts)

