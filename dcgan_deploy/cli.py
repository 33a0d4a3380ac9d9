"""The command line: a thin edge over the library, and the only place that knows exit codes."""
from __future__ import annotations

import functools
import json
import math
import signal
import sys
import time
import warnings

import click

from . import __version__


def friendly_errors(fn):
    """Turn the library's errors into one line on stderr and a non-zero exit."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .modelfile import ModelError
        try:
            return fn(*args, **kwargs)
        except (ModelError, ValueError, OSError, OverflowError) as e:
            raise click.ClickException(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) \
                from None
        except MemoryError:
            raise click.ClickException("out of memory: ask for fewer images at a time (-n, --batch-size)") from None
    return wrapper


def _terminate(signum, frame):
    # SIGTERM as an exception, like Ctrl-C: files being written are removed, temporary folders cleaned up.
    raise SystemExit(128 + signum)


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


def seed_list(text: str) -> list[int]:
    from .latent import check_seed
    try:
        return [check_seed(int(s)) for s in text.split(",")]
    except ValueError as e:
        raise ValueError(f"--seeds must be comma-separated whole numbers from 0 to 2**64 - 1, got {text!r}"
                         + (f" ({e})" if "2**64" in str(e) else "")) from None


model_option = click.option("-m", "--model", default=None,
                            help="A .onnx file or a bundled model name (default: the bundled default).")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                             help="auto = CUDA when onnxruntime's CUDA provider is really active, else CPU.")
threads_option = click.option("--threads", type=int, default=None,
                              help="onnxruntime intra-op threads (default: all cores; at most 4 per core).")
truncation_option = click.option("--truncation", "psi", type=float, default=1.0, show_default=True,
                                 help="Truncation psi, 0 < psi <= 1: latents scaled by psi (fidelity over "
                                      "diversity); 1 = off.")
MAX_COUNT = 10**9
MAX_GIF_MS = 10_000


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dcgan-deploy")
def main():
    """Generate images from DCGAN generators exported to ONNX.

    \b
    Example:
        dcgan-deploy generate -n 64 -o grid.png
    """
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


@main.command()
@model_option
@click.option("-n", "count", type=int, default=None, help="Number of images (default 64).")
@click.option("--seed", type=int, default=None, help="Seed for the latents (default: random, printed).")
@click.option("-o", "--out", "out", default="grid.png", show_default=True,
              help="*.png: one grid; *.npy: uint8 [n,H,W,C] array; a folder or path ending in '/': one PNG each.")
@device_option
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per onnxruntime call.")
@click.option("--latents", "latents_file", type=click.Path(dir_okay=False), default=None,
              help="A float32 [n, latent_dim] .npy of latents to render instead of a seed (e.g. from the demo).")
@truncation_option
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder whole.")
@click.option("--label", default=None,
              help="A class-conditional model's class (name or index) for every image, or 'all': a grid with one "
                   "row per class, -n images each (default 8). Default: the classes in turn from the seed.")
@threads_option
@friendly_errors
def generate(model, count, seed, out, device, batch_size, latents_file, psi, overwrite, label, threads):
    """Generate N images from a seed.

    The same seed gives the same images on every backend, and the first k of n
    images equal `-n k`.

    \b
    Examples:
        dcgan-deploy generate -n 64 --seed 7 -o grid.png
        dcgan-deploy generate -n 1000000 -o digits.npy
        dcgan-deploy generate -n 100 -o samples/
        dcgan-deploy generate -n 64 --truncation 0.7 -o faithful.png
        dcgan-deploy generate --latents latent.npy -o edited.png
        dcgan-deploy generate -m mnist-cond --label 7 -n 16 -o sevens.png
        dcgan-deploy generate -m mnist-cond --label all -o classes.png
    """
    from .images import check_output, write_images
    from .latent import check_count, chosen_rows, seed_or_random

    gen = load_generator(model, device, threads)
    batch_size = gen.check_batch_size(batch_size, "--batch-size")
    if label is not None and not gen.classes:
        raise ValueError(f"--label: {gen.path.name} is not class-conditional (it has no classes)")
    z = chosen_rows(latents_file, gen.latent_dim, {"-n": count is not None, "--seed": seed is not None,
                                                   "--truncation": psi != 1.0})
    if label == "all":
        return generate_all_classes(gen, z, latents_file, count, seed, psi, out, overwrite, batch_size)
    if z is not None:
        count, source, images = len(z), f"latents from {latents_file}", gen.images(z, batch_size, label)
    else:
        count, seed = check_count(64 if count is None else count, "-n"), seed_or_random(seed)
        if count > MAX_COUNT:
            raise ValueError(f"-n {count} is more than {MAX_COUNT:,} images; generate them in parts")
        source, images = f"seed {seed}", gen.iter_generate(count, seed, batch_size, psi, label)
    kind = check_output(out, count, gen.image_shape, overwrite)
    with progress(count, "generating") as bar:
        write_images(counted(images, bar), out, kind, count, gen.image_shape, overwrite)
    shown = f", class {gen.classes[gen.class_index(label)]}" if label is not None else ""
    click.echo(f"wrote {count} image(s) to {out} ({source}{shown}, {gen.provider})", err=True)


def generate_all_classes(gen, z, latents_file, count, seed, psi, out, overwrite, batch_size) -> None:
    """``generate --label all``: one row per class, the same latents in every row (so a column is one
    latent drawn as each class); a PNG grid, or the rows one after another (.npy, a folder)."""
    import numpy as np

    from .images import check_output, grid, save_png, write_images
    from .latent import check_count, seed_or_random
    if z is None:
        per_row, seed = check_count(8 if count is None else count, "-n"), seed_or_random(seed)
        z, source = gen.latents(per_row, seed, psi), f"seed {seed}"
    else:
        per_row, source = len(z), f"latents from {latents_file}"
    total = per_row * len(gen.classes)
    if total > MAX_COUNT:
        raise ValueError(f"--label all: {total:,} images ({len(gen.classes)} classes x {per_row}); use a smaller -n")
    kind = check_output(out, total, gen.image_shape, overwrite)
    rows = (np.concatenate(list(gen.images(z, batch_size, k))) for k in range(len(gen.classes)))
    if kind == "grid":
        from .images import check_grid_size
        check_grid_size(total, gen.height, gen.width, shape=(len(gen.classes), per_row))
        save_png(grid(np.concatenate(list(rows)), nrow=per_row), out)
    else:
        write_images(rows, out, kind, total, gen.image_shape, overwrite)
    click.echo(f"wrote {total} image(s) to {out}: {len(gen.classes)} classes x {per_row} ({source}, {gen.provider})",
               err=True)


@main.command()
@model_option
@click.option("--seeds", default="0,1", show_default=True, help="Comma-separated seeds to pass through, in order.")
@click.option("--frames", type=int, default=16, show_default=True, help="Frames from each seed to the next.")
@click.option("--method", type=click.Choice(["slerp", "lerp"]), default="slerp", show_default=True)
@click.option("-o", "--out", default="interpolation", show_default=True,
              help="Output stem: writes STEM.png (strip) and STEM.gif (animation).")
@click.option("--duration", type=int, default=80, show_default=True,
              help=f"GIF frame time in ms (10 to {MAX_GIF_MS}).")
@truncation_option
@click.option("--label", default=None, help="A class-conditional model's class (name or index); default: the seed's.")
@click.option("--to-label", default=None,
              help="Walk one seed's image from --label to this class instead (a class-conditional model).")
@device_option
@friendly_errors
def interpolate(model, seeds, frames, method, out, duration, psi, label, to_label, device):
    """Interpolate through the latents of several seeds, or one seed from a class to another.

    Each seed's latent is its first image's latent (`generate -n 1 --seed S`).

    \b
    Examples:
        dcgan-deploy interpolate --seeds 3,14,15 --frames 24 -o walk
        # -> walk.png (all frames in a strip) and walk.gif
        dcgan-deploy interpolate -m mnist-cond --seeds 5 --label 3 --to-label 8 -o three-to-eight
    """
    from .images import save_strip_and_gif

    if not 10 <= duration <= MAX_GIF_MS:
        raise ValueError(f"--duration must be from 10 to {MAX_GIF_MS} ms per frame, got {duration}")
    stem = out[:-4] if out.lower().endswith((".png", ".gif")) else out
    points = seed_list(seeds)
    if to_label is not None and (label is None or len(points) != 1):
        raise ValueError("--to-label walks one seed from --label to --to-label: give --label and one seed "
                         "(e.g. --seeds 5 --label 3 --to-label 8)")
    gen = load_generator(model, device)
    images = gen.interpolate(points, frames, method, psi, label) if to_label is None else \
        gen.class_walk(points[0], label, to_label, frames, psi)
    strip, anim = save_strip_and_gif(images, stem, per_row=frames + 1, duration_ms=duration,
                                     scale=max(1, 128 // gen.height))
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
    facts = load_generator(model, device).info()
    click.echo(json.dumps(json_safe(facts), indent=2, allow_nan=False) if as_json else format_info(facts))


def format_info(facts: dict) -> str:
    """``info``'s text: every metadata value made safe for a terminal (no escape codes, no line breaks)."""
    from .evaluate import quality_line
    from .modelfile import printable
    lines = [f"model      {printable(facts['path'])}"]
    lines += [f"  {printable(key, 60):<24} {printable(value, 300)}" for key, value in sorted(facts["metadata"].items())]
    lines.append(f"precision  {facts['precision']} (from the graph)")
    if "integer_sums" in facts:
        from .int8 import summary
        lines.append("int8 sums  " + summary(facts["integer_sums"]))
    lines.append("parity     " + (summarize_parity(facts["parity"]) if facts["parity"] else "no parity report in this file"))
    if "evaluation" in facts:
        lines.append("quality    " + quality_line(facts["evaluation"]))
    if facts.get("classes"):
        lines.append(f"classes    {len(facts['classes'])}: " + ", ".join(f"{i} {printable(c, 100)}"
                                                                      for i, c in enumerate(facts["classes"])))
    if facts["directions"]:
        lines.append("directions " + ", ".join(map(direction_fact, facts["directions"])))
    lines.append(f"providers  active: {', '.join(facts['providers']['active'])}; "
                 f"available: {', '.join(facts['providers']['available'])}")
    if "cuda" in facts:
        lines.append(f"cuda       {printable(facts['cuda'], 300)}")
    lines.append(f"cpu        {printable(facts['cpu']['name'], 100)} ({facts['cpu']['summary']}; "
                 f"int8 kernels: {facts['cpu']['int8_kernel']})")
    return "\n".join(lines)


def direction_fact(d: dict) -> str:
    """``sefa-1 (14.5%)``, ``towards-9 (AUC 0.86, raises 93% at step 3)``."""
    if d["method"] == "sefa":
        return d["name"] + (f" ({d['share']:.1%})" if "share" in d else "")
    raised = f", raises {d['raised']:.0%} at step {d['step']:g}" if "raised" in d and "step" in d else ""
    return d["name"] + (f" (AUC {d['auc']:.2f}{raised})" if "auc" in d else "")


def json_safe(value):
    """``value`` with non-finite floats as null: JSON has no NaN or Infinity."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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

    Seed grids, interpolation between seeds, and latent editing along the model's
    directions, on the runtime (no torch). Binds to 127.0.0.1 unless told otherwise.

    \b
    Example:
        dcgan-deploy demo                     # http://127.0.0.1:7860
        dcgan-deploy demo -m exports/mine.onnx --host 0.0.0.0 --auth me:secret
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise click.ClickException("the demo needs Gradio: pip install 'dcgan-deploy[demo]'") from None
    from .demo import launch, launch_warnings

    for warning in launch_warnings(host, share, auth):
        click.echo(f"warning: {warning}", err=True)
    launch(models, host=host, port=port, share=share, auth=auth, device=device)


@main.command()
@click.argument("model", required=False)
@click.option("--data", default=None, help="Real images to compare with (any train source; default: the "
                                           "embedded MNIST sample for 28x28 models).")
@click.option("-n", "count", type=int, default=2500, show_default=True, help="Generated images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--features", default=None,
              help="ONNX feature extractor (image [N,C,H,W] in [-1,1] -> features[, probs]), or the FID "
                   "Inception weights file of pytorch-fid / torch-fidelity (.pth; converted once, needs torch); "
                   "default: the shipped classifier for the model's image size.")
@click.option("--truncation", "psi", type=float, default=1.0, show_default=True, help="Truncation psi of the samples.")
@click.option("--ckpt", default=None, type=click.Path(dir_okay=False),
              help="Also measure deployment drift: PyTorch samples of this checkpoint vs the ONNX samples (needs torch).")
@click.option("--save", is_flag=True, help="Store the summary in the model's metadata (shown by `info`).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def evaluate(model, data, count, seed, features, psi, ckpt, save, as_json):
    """Measure image quality: FID, KID, classifier score and class coverage.

    Generated images are compared with the real held-out half of --data, beside the
    floor (the same metrics between two disjoint real halves). FID depends on the
    sample count and the feature extractor; the report states both. With a data file
    that marks held-out images (training/emoji/prepare.py), also a memorisation check.

    \b
    Example:
        dcgan-deploy evaluate                       # the bundled model, n = 2500
        dcgan-deploy evaluate exports/mine.onnx --ckpt runs/mine/train_state.pt --json
    """
    from . import evaluate as ev

    if features and features.lower().endswith((".pth", ".pt")):  # Inception weights: to an ONNX extractor, once
        need_torch("--features FILE.pth")
        from .inception import cached_extractor
        features = str(cached_extractor(features))
    if ckpt:
        need_torch("--ckpt drift")
    report = ev.evaluate(model, data=data, n=count, seed=seed, features=features, truncation=psi)
    if ckpt:
        from .parity import drift
        report["drift"] = drift(report["model"], ckpt, n=min(count, 1000), seed=seed, features=features)
    if save:
        ev.save_summary(report)
    click.echo(json.dumps(json_safe(report), indent=2, allow_nan=False) if as_json else ev.format_quality(report))


@main.command()
@click.option("-m", "--model", "models", multiple=True, help="Model(s) to measure (default: the bundled default).")
@device_option
@click.option("--batch-size", "batch_sizes", default="1,8,64,256", show_default=True, help="Comma-separated batch sizes.")
@threads_option
@click.option("--seconds", type=float, default=2.0, show_default=True,
              help="onnxruntime's timed runs per batch size, after the first run (PyTorch and the IO-bound runs "
                   "get as long), split into 5 alternating rounds; 0.01 to 600.")
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
    """Measure generation speed: images/s and latency, beside PyTorch if asked.

    Session creation, first run, images/s and latency p50/p95/p99 per batch size.
    With --ckpt, PyTorch eager on the same latents in the same alternating rounds
    (and with --compile, torch.compile too), on the model's device. On a GPU,
    --io-binding and --cuda-graph time what a device-resident caller gets.

    \b
    Example:
        dcgan-deploy bench --threads 2 --batch-size 64
        dcgan-deploy bench -m exports/mnist.onnx --ckpt runs/mnist/generator.safetensors --compile --json
        dcgan-deploy bench --device cuda --batch-size 256,4096,32768 --io-binding --cuda-graph
    """
    from . import bench as benchmark

    options = benchmark.check_options(models, device, batch_sizes, threads, seconds, ckpt, compile_, cuda_graph)
    if ckpt:
        need_torch("--ckpt")
        from .checkpoint import open_checkpoint
        from .nets import TorchRunners
        options["torch_model"] = TorchRunners(open_checkpoint(ckpt).model)
    result = benchmark.measure(**options, bound=bound)
    click.echo(json.dumps(result, indent=2) if as_json else benchmark.format_table(result))


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--labelled", is_flag=True,
              help="Also the classifier-labelled directions (\"towards <class>\"), from the shipped classifier for "
                   "the model's image size (samples the generator: 30 s to a few minutes on a CPU).")
@click.option("--count", type=click.IntRange(1, 32), default=10, show_default=True, help="SeFa directions to keep.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the labelled directions' samples.")
@friendly_errors
def directions(model, labelled, count, seed):
    """Find a model's latent directions and store them in its file.

    SeFa directions come from the ONNX file alone (its first layer's top singular
    vectors); --labelled adds a direction towards each class of the domain
    classifier. The file is rewritten in place, atomically: on any error it is left
    as it was. `info` lists them, `edit` and the demo use them.

    \b
    Example:
        dcgan-deploy directions exports/mine.onnx --labelled
        dcgan-deploy edit -m exports/mine.onnx --seed 3 --direction sefa-1 -o strip.png
    """
    from .directions import STEP, compute, store

    found = compute(model, labelled_too=labelled, count=count, seed=seed)
    store(model, found, source=f"dcgan-deploy directions{' --labelled' if labelled else ''} --count {count} --seed {seed}")
    for d in found:
        click.echo(f"{d.name:<28} {d.method:<9} " + (f"singular value {d.value:.3g}, {d.share:.1%} of the spectrum"
                                                      if d.method == "sefa" else
                                                      f"boundary AUC {d.value:.3f} on held-out samples, raises p({d.label}) "
                                                      f"for {d.raised:.1%} of fresh latents at step {STEP:g}"))
    click.echo(f"stored {len(found)} directions in {model}", err=True)


@main.command()
@model_option
@click.option("--seed", type=int, default=None, help="Seed whose image to edit (with --index).")
@click.option("--index", type=click.IntRange(0, 10**6), default=0, show_default=True,
              help="Which image of the seed (as in `generate -n I+1 --seed S`), or row of --latents.")
@click.option("--latents", "latents_file", type=click.Path(dir_okay=False), default=None,
              help="Edit a latent from a .npy file (e.g. the demo's) instead of a seed.")
@click.option("--direction", "names", multiple=True, required=True,
              help="A direction's name or number (see `info`); repeat for a grid, one row each.")
@click.option("--strengths", default="-3,-1.5,0,1.5,3", show_default=True,
              help="Comma-separated steps along each direction (units of the latent's scale).")
@truncation_option
@click.option("-o", "--out", default="edit.png", show_default=True, help="The strip or grid, *.png.")
@click.option("--label", default=None, help="A class-conditional model's class (name or index); default: the seed's.")
@device_option
@friendly_errors
def edit(model, seed, index, latents_file, names, strengths, psi, out, label, device):
    """Move one image's latent along named directions: a strip, or a grid with one row per direction.

    \b
    Examples:
        dcgan-deploy edit --seed 3 --direction sefa-1 -o strip.png
        dcgan-deploy edit --seed 3 --index 5 --direction towards-7 --direction sefa-2 --strengths -4,-2,0,2,4 -o grid.png
        dcgan-deploy edit --latents latent.npy --direction 1 -o strip.png
    """
    from .edits import edit_grid, parse_strengths
    from .images import grid, save_png
    from .latent import chosen_rows, seed_or_random

    steps = parse_strengths(strengths)
    if not out.lower().endswith(".png"):
        raise ValueError(f"-o {out}: edit writes a PNG strip or grid; give a path ending in .png")
    gen = load_generator(model, device)
    rows = chosen_rows(latents_file, gen.latent_dim, {"--seed": seed is not None, "--truncation": psi != 1.0})
    if rows is not None:
        if index >= len(rows):
            raise ValueError(f"--index {index}: {latents_file} has {len(rows)} row(s)")
        z, source = rows[index], f"row {index} of {latents_file}"
    else:
        seed = seed_or_random(seed)
        z, source = gen.latent(seed, index, psi), f"image {index} of seed {seed}"
    if gen.classes and label is None:  # the image's class where it came from: its seed's, or row 0's turn
        label = int(gen.labels(index + 1, 0 if seed is None else seed)[index])
    images = edit_grid(gen, z, names, steps, label)
    save_png(grid(images, nrow=len(steps)), out)
    click.echo(f"wrote {out}: {source} along {', '.join(names)} at {', '.join(f'{s:g}' for s in steps)}", err=True)


@main.command()
@click.option("-m", "--model", "models", multiple=True, help="A model to offer (default: every bundled model); repeat.")
@click.option("-o", "--out", required=True, help="The site's folder (new or empty; see --overwrite).")
@click.option("--ort-dist", type=click.Path(file_okay=False), default=None,
              help="A local onnxruntime-web dist/ folder to copy into the site (node_modules/onnxruntime-web/dist "
                   "after `npm install onnxruntime-web`), so that it works offline; else the page loads a pinned "
                   "version from a public CDN.")
@click.option("--ckpt", "ckpts", multiple=True, metavar="NAME=CKPT",
              help="Also compare model NAME in the browser with PyTorch, from its checkpoint (needs torch).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty folder whole.")
@click.option("--unchecked", is_flag=True,
              help="Write the site even where the browser gate cannot run (no Chromium); the page says it is unchecked.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def web(models, out, ort_dist, ckpts, overwrite, unchecked, as_json):
    """Write a static site that generates in the browser, parity-gated in headless Chromium.

    The page: model facts, seed grids (PNG download), interpolation, latent
    directions. The same seed gives the same images as `generate`. Serve the folder
    from any static host, or `python -m http.server`. The JavaScript runtime
    (dcgan.mjs) works in Node too. Exit code 4 when a model misses the browser gate
    (then no site is written); without Chromium, no site unless --unchecked.

    \b
    Example:
        npm install onnxruntime-web@1.30.0
        dcgan-deploy web -o site --ort-dist node_modules/onnxruntime-web/dist
        python -m http.server -d site 8000       # http://127.0.0.1:8000
    """
    from .gate import GateError
    from .web import build, check_references, format_report, resolve_models

    specs = {}
    for spec in ckpts:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--ckpt takes NAME=CKPT (a model's name and its checkpoint), got {spec!r}")
        specs[name] = path
    chosen = resolve_models(models)  # checked once, before any checkpoint is loaded
    check_references(specs, chosen)
    references = {}
    for name, path in specs.items():
        need_torch("--ckpt")
        from .parity import pytorch_reference
        references[name] = pytorch_reference(path)
    try:
        report = build(chosen, out, ort_dist, overwrite=overwrite, references=references, unchecked=unchecked)
    except GateError as e:
        click.echo(json.dumps(e.report, indent=2) if as_json else format_report(e.report), err=not as_json)
        click.echo(f"Error: {e}", err=True)
        sys.exit(EXIT_PARITY)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    click.echo(f"wrote the site to {out}", err=True)


@main.command()
@click.option("-m", "--model", "models", multiple=True, help="A model to serve (default: every bundled model); repeat.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--replicas", type=int, default=1, show_default=True, help="Replicas per model (across the cluster).")
@click.option("--max-batch-size", type=int, default=256, show_default=True,
              help="Images per onnxruntime call a replica batches requests into.")
@click.option("--address", default=None,
              help="Join this Ray cluster (e.g. 10.0.0.5:6379, after `ray start --head` there) instead of starting "
                   "a local Ray.")
@threads_option
@friendly_errors
def serve(models, host, port, replicas, max_batch_size, address, threads):
    """Serve generators over the Open Inference Protocol (KServe v2 / Triton), on Ray Serve.

    POST /v2/models/NAME/infer with z, or seed and n; GET /v2/models/NAME/grid.png.
    Requests from many clients are batched; replicas spread over a Ray cluster.

    \b
    Example:
        dcgan-deploy serve --replicas 2
        curl 'http://127.0.0.1:8000/v2/models/mnist/grid.png?seed=7&n=16' -o grid.png
    """
    try:
        import ray  # noqa: F401
        from ray import serve as _  # noqa: F401
    except ImportError:
        raise click.ClickException("serve needs Ray Serve: pip install 'dcgan-deploy[serve]'") from None
    from .serve import serve_forever, start

    from .bundled import is_loopback
    if not is_loopback(host):
        click.echo(f"warning: serving on {host}: anyone who can reach it can use it (no authentication)", err=True)
    url = start(models, host, port, replicas, max_batch_size, address, threads)
    click.echo(f"serving on {url} (Ctrl-C to stop); try: curl '{url}v2/models/{{name}}/grid.png?seed=0&n=16' "
               "-o grid.png", err=True)
    serve_forever(url)


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
@click.option("--data", default=None, help="mnist-sample, synthetic[:N], a folder of images, an MNIST IDX folder, an "
                                           "emoji-datasource package folder, or .npz.")
@click.option("--steps", type=int, default=None, help="Total steps of the run (with --resume: continue up to this step).")
@click.option("--batch-size", type=int, default=None, help="Images per step (per process under torchrun).")
@click.option("--out", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder (default: runs/<recipe name>).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--threads", type=int, default=None,
              help="Intra-op threads for the run (default: the recipe's, 0 = all cores); a resumed run keeps its own.")
@click.option("--average-start", type=int, default=None,
              help="Average the generator's weights from this step on (the recipe's average_start; 0 = off). "
                   "May be set when resuming, for steps still to come.")
@click.option("--conditional", type=click.Choice(["on", "off", "auto"]), default=None,
              help="Class-conditional on the data's labels (auto: when it has two or more classes, e.g. class "
                   "subfolders); default: the recipe's.")
@click.option("--dry-run", is_flag=True, help="Print the resolved recipe (every key, as TOML) and exit.")
@friendly_errors
def train(recipe, resume_dir, data, steps, batch_size, run_dir, device, seed, threads, average_start, conditional,
          dry_run):
    """Train a generator from a recipe (a TOML file in training/).

    Writes train_state.pt, generator.safetensors, log.jsonl and sample grids to the
    run folder. Under `torchrun --nproc_per_node N -m dcgan_deploy train ...` it
    trains data-parallel (gloo on CPU, NCCL on GPU). Exit code 3 means the run
    diverged (its last checkpoint, if it has one, is kept). One run folder is
    trained by one process at a time.

    \b
    Examples:
        dcgan-deploy train training/mnist-dcgan.toml --out runs/mnist
        dcgan-deploy train --resume runs/mnist --steps 8000
        dcgan-deploy train --resume runs/emoji64 --average-start 15000
        dcgan-deploy train training/dcgan64-folder.toml --data photos/ --dry-run
        dcgan-deploy train training/dcgan64-folder.toml --data pets/ --conditional auto   # pets/cat, pets/dog
    """
    need_torch("train")
    import logging

    from .train import DivergenceError, open_run
    from .train import dry_run as resolved

    if dry_run:
        click.echo(resolved(recipe, resume_dir, run_dir, data=data, steps=steps, batch_size=batch_size, device=device,
                            seed=seed, threads=threads, average_start=average_start, conditional=conditional), nl=False)
        return

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    start = time.perf_counter()
    trainer = open_run(recipe, resume_dir, run_dir, progress=sys.stderr.isatty(), data=data, steps=steps,
                       batch_size=batch_size, device=device, seed=seed, threads=threads, average_start=average_start,
                       conditional=conditional)
    try:
        record = trainer.train()
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
    from .gate import Thresholds
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
@click.option("--arch", default=None, help="Architecture of a bare state dict (e.g. dcgan64 for netG_epoch_N.pth; "
                                           "pytorch-gan-mlp for pytorch-GAN's gan/cgan, pytorch-gan-dcgan for its "
                                           "dcgan/acgan).")
@click.option("--classes", default=None, help="A conditional generator's class names in label order, comma-separated "
                                              "(e.g. for a bare state dict; default 0, 1, ...).")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--fp16", is_flag=True, help="Also write a float16 variant for CUDA (<name>-fp16.onnx).")
@click.option("--int8", is_flag=True,
              help="Also write an int8 variant for the CPU (<name>-int8.onnx; static quantization calibrated on "
                   "the model's own latents, gated at PSNR >= 30 dB against PyTorch).")
@click.option("--no-forms", "plain", is_flag=True,
              help="Write the plain graph (BatchNorm folded) instead of the forms tuned for onnxruntime's CPU "
                   "kernels: for other runtimes, and for debugging.")
@click.option("--labelled", is_flag=True,
              help="Also store classifier-labelled latent directions (SeFa ones are always stored; see `directions`).")
@click.option("--triton", type=click.Path(file_okay=False), default=None,
              help="Also write a Triton model-repository entry DIR/<name>/{config.pbtxt,1/model.onnx}.")
@click.option("--attribution", default=None, help="The credit the training data's licence asks for, kept in the "
                                                 "model's metadata (shown by `info`, the demo and the web page).")
@threshold_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly_errors
def export(ckpt, out, arch, classes, opset, fp16, int8, plain, labelled, triton, attribution, max_abs_cpu, max_abs_cuda,
           max_changed_cuda, as_json):
    """Export a checkpoint to ONNX and prove parity with PyTorch.

    CKPT is a trainer's train_state.pt or generator.safetensors, or a bare
    generator state dict with --arch. The model is written only if the parity gate
    passes; otherwise the exit code is 4 and the report says which numbers missed.

    \b
    Examples:
        dcgan-deploy export runs/mnist/train_state.pt -o exports/mnist.onnx
        dcgan-deploy export netG_epoch_24.pth --arch dcgan64 --fp16 --triton model_repository
        dcgan-deploy export acgan_generator.pth --arch pytorch-gan-dcgan --int8
        dcgan-deploy export runs/mnist/generator.safetensors -o exports/mnist.onnx --int8
    """
    need_torch("export")
    from .export import export as run_export
    from .gate import GateError

    thresholds = thresholds_from(max_abs_cpu, max_abs_cuda, max_changed_cuda)
    try:
        result = run_export(ckpt, out, arch=arch, opset=opset, fp16=fp16, int8=int8, triton=triton,
                            thresholds=thresholds, forms=not plain, labelled=labelled, attribution=attribution,
                            classes=None if classes is None else [x.strip() for x in classes.split(",")])
    except GateError as e:
        report_gate(e.report, as_json, error=str(e))
        sys.exit(EXIT_PARITY)
    click.echo(json.dumps(json_safe(result), indent=2) if as_json else format_export(result))


def format_export(result: dict) -> str:
    from .parity import format_gate
    lines = [format_gate(result["parity"]), f"wrote {result['model']} and {result['report']}"]
    if "fp16" in result:
        p = result["fp16"]["parity"]
        lines.append(f"wrote {result['fp16']['model']} (fp16: " + ("verified on CUDA" if p.get("verified")
                                                                    else "UNVERIFIED: " + p.get("reason", "")) + ")")
    if "int8" in result:
        w = result["int8"]["parity"]["worst"]
        lines.append(f"wrote {result['int8']['model']} (int8: PSNR >= {w['psnr']:.1f} dB against PyTorch fp32, "
                     f"{w['changed']:.1%} of uint8 pixels changed)")
    if "triton" in result:
        lines.append(f"wrote Triton model repository entry {result['triton']}")
    return "\n".join(lines)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--arch", default=None, help="Architecture of a bare state dict.")
@click.option("--precision", type=click.Choice(["float32", "float16", "int8"]), default=None,
              help="The gate to apply (default: what the file's graph is; never what its metadata claims).")
@threshold_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def verify(model, ckpt, arch, precision, max_abs_cpu, max_abs_cuda, max_changed_cuda, as_json):
    """Re-run the parity gate on an existing ONNX file against its checkpoint.

    Exit code 0 when it passes, 4 when it misses.

    \b
    Example:
        dcgan-deploy verify exports/mnist.onnx runs/mnist/train_state.pt --json
    """
    need_torch("verify")
    from .export import verify as run_verify

    report = run_verify(model, ckpt, arch=arch, precision=precision,
                        thresholds=thresholds_from(max_abs_cpu, max_abs_cuda, max_changed_cuda))
    report_gate(report, as_json)
    if not report["passed"]:
        sys.exit(EXIT_PARITY)


def report_gate(report: dict, as_json: bool, error: str | None = None) -> None:
    from .parity import format_gate
    if as_json:
        click.echo(json.dumps(json_safe({"error": error, **report} if error else report), indent=2))
    elif report.get("checks"):
        click.echo(format_gate(report))
    if error:
        detail = "" if report.get("checks") or not report.get("failures") else ": " + "; ".join(report["failures"])
        click.echo(f"Error: {error}{detail}", err=True)


def summarize_parity(parity: dict) -> str:
    status = {True: "PASSED", False: "FAILED"}.get(parity.get("passed"), "NOT RUN")
    worst = parity.get("worst", {})
    parts = [f"{k}={v:.3g}" for k, v in worst.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    providers = ", ".join(str(p) for p in parity.get("providers", []))
    return f"{status} on {providers or 'no provider'} " + " ".join(parts)
