"""The command line: a thin edge over the library, and the only place that knows exit codes."""
from __future__ import annotations

import functools
import json
import sys
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
@threads_option
@friendly_errors
def generate(model, count, seed, out, device, batch_size, threads):
    """Generate N images from a seed.

    The same seed gives the same images on every backend, and the first k of n
    images equal `-n k`.

    \b
    Examples:
        dcgan-deploy generate -n 64 --seed 7 -o grid.png
        dcgan-deploy generate -n 1000000 -o digits.npy
        dcgan-deploy generate -n 100 -o samples/
    """
    import numpy as np

    from .images import check_grid_size, grid, save_png, write_npy, write_pngs
    from .latent import check_count, check_seed, random_seed

    count, batch_size = check_count(count, "-n"), check_count(batch_size, "--batch-size")
    seed = random_seed() if seed is None else check_seed(seed)
    kind = output_kind(out)
    gen = load_generator(model, device, threads)
    h, w, c = gen.image_shape
    if kind == "grid":
        check_grid_size(count, h, w)
    with progress(count, "generating") as bar:
        chunks = counted(gen.iter_generate(count, seed, batch_size), bar)
        if kind == "grid":
            save_png(grid(np.concatenate(list(chunks))), out)
        elif kind == "npy":
            write_npy(chunks, out, (count, h, w, c))
        else:
            write_pngs(chunks, out, count)
    click.echo(f"wrote {count} image(s) to {out} (seed {seed}, {gen.provider})", err=True)


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
    for key, value in facts["metadata"].items():
        click.echo(f"  {key:<24} {value}")
    parity = facts["parity"]
    click.echo("parity     " + (summarize_parity(parity) if parity else "no parity report in this file"))
    click.echo(f"providers  active: {', '.join(facts['providers']['active'])}; "
               f"available: {', '.join(facts['providers']['available'])}")


def summarize_parity(parity: dict) -> str:
    status = "PASSED" if parity.get("passed") else "FAILED"
    worst = parity.get("worst", {})
    parts = [f"{k}={v:.3g}" for k, v in worst.items() if isinstance(v, (int, float))]
    return f"{status} on {', '.join(parity.get('providers', []))} " + " ".join(parts)

