"""The Gradio latent-space demo: seed grids, interpolation and latent editing.

Runs on the runtime (numpy + onnxruntime). Every handler re-validates its inputs on
the server; the browser's slider limits are not trusted. Files the demo writes live in
its own temporary folder, a bounded number at a time, removed when it exits (on Ctrl-C
and SIGTERM too); Gradio's own cache lives there as well and is kept under a byte bound.
A rejected input is answered with its message and logged as one line.
"""
from __future__ import annotations

import atexit
import collections
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import bundled
from .edits import Direction, random_directions
from .images import grid, save_gif, to_uint8
from .latent import MAX_SEED, random_seed
from .runtime import Generator

log = logging.getLogger("dcgan_deploy.demo")

GRID_SIDE = 12          # grid of at most 12 x 12 images
WALK_FRAMES = 59        # interpolation frames from one seed to the next (60 in all)
N_SLIDERS = 4          # latent-editing sliders
SEED_CLASSES = "each image: the seed's class, in turn"  # the class picker's first choice (conditional models)
SLIDER_STRENGTH = 5.0
KEEP_FILES = 64        # demo output files kept on disk at once
MAX_CACHE_BYTES = 64 * 1024**2  # Gradio's cache of served files, pruned oldest first
QUEUE_SIZE = 16
CONCURRENCY = 2
SESSIONS = 64          # Gradio's per-session state kept in memory (its default is 10,000)
DISPLAY_PIXELS = 512   # images are scaled up (nearest) to about this size for display


class DemoInputError(ValueError):
    """A request the demo refuses; the message is shown to the user."""


def as_int(value, name: str, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from what the browser sent: an int, digits (exactly, to 2**64 - 1 and beyond), or an
    integral float no larger than 2**53 (above that a float no longer holds every integer)."""
    if isinstance(value, bool) or value is None:
        raise DemoInputError(f"{name} must be a whole number between {lo} and {hi}")
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[0-9]{1,40}", text):
            value = int(text)
        else:
            try:
                value = float(text[:400])
            except (ValueError, OverflowError):
                raise DemoInputError(f"{name} must be a whole number, got {value[:40]!r}") from None
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or value != int(value):
            raise DemoInputError(f"{name} must be a whole number, got {value}")
        if abs(value) > 2**53:
            raise DemoInputError(f"{name} must be typed as digits above 2**53 (a float cannot hold it exactly), "
                                 f"got {value:.17g}")
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise DemoInputError(f"{name} must be a whole number, got {str(value)[:40]!r}")
    if not lo <= value <= hi:
        shown = str(int(value))
        raise DemoInputError(f"{name} must be between {lo} and {hi}, got "
                             f"{shown if len(shown) <= 40 else shown[:20] + f'... ({len(shown)} digits)'}")
    return int(value)


def as_float(value, name: str, lo: float, hi: float) -> float:
    """A finite float in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DemoInputError(f"{name} must be a number between {lo} and {hi}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise DemoInputError(f"{name} must be a number between {lo} and {hi}, got {value}")
    return float(value)


def upscale(image: np.ndarray, target: int = DISPLAY_PIXELS) -> np.ndarray:
    """Nearest-neighbour enlargement of uint8 ``[H, W, C]`` so the longer side is about ``target``."""
    k = max(1, target // max(image.shape[:2]))
    return image.repeat(k, axis=0).repeat(k, axis=1)


def for_display(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> what gr.Image shows (grayscale as 2-D)."""
    return upscale(image)[..., 0] if image.shape[-1] == 1 else upscale(image)


class Demo:
    """The demo's state: the models (one ``Generator`` each, shared by all requests) and its files."""

    def __init__(self, models: dict[str, Path], device: str = "auto"):
        if not models:
            raise ValueError("the demo needs at least one model")
        self.models = dict(models)
        self.device = device
        self._generators: dict[str, Generator] = {}
        self._lock = threading.Lock()
        self.tmp = Path(tempfile.mkdtemp(prefix="dcgan-deploy-demo-"))
        self._files: collections.deque[Path] = collections.deque()
        self._pruned = 0.0
        atexit.register(self.cleanup)

    # ---- models ---------------------------------------------------------------------
    def generator(self, name) -> Generator:
        if not isinstance(name, str) or name not in self.models:
            raise DemoInputError(f"unknown model {str(name)[:80]!r}; choose one of {', '.join(self.models)}")
        with self._lock:
            if name not in self._generators:
                self._generators[name] = Generator.load(self.models[name], device=self.device)
            return self._generators[name]

    def model_info(self, name) -> str:
        gen = self.generator(name)
        m = gen.metadata
        parity = gen.parity
        verdict = ("passed" if parity.get("passed") else "not proven") if parity else "no report"
        if gen.precision != "float32" and parity.get("passed"):  # a reduced-precision variant passes a PSNR gate
            verdict += f" ({gen.precision}, PSNR ≥ {parity['worst']['psnr']:.1f} dB)"
        return (f"**{m['architecture']}** trained on `{_short(m.get('dataset', '?'))}` for {m.get('train_step', '?')} "
                f"steps · {gen.channels}×{gen.height}×{gen.width} images from a {gen.latent_dim}-d {gen.latent_prior} "
                f"latent · runs on **{gen.device.upper()}** ({gen.provider}) · export parity: {verdict}"
                + (f" · {_short(m['attribution'], 300)}" if m.get("attribution") else ""))

    def directions(self, name) -> list[Direction]:
        """The model's named directions (SeFa, then labelled); fixed random ones for a model without any."""
        gen = self.generator(name)
        return gen.directions or random_directions(gen.latent_dim, N_SLIDERS)

    def direction_note(self, name) -> str:
        gen = self.generator(name)
        if not gen.directions:
            return (f"This model carries no latent directions, so the sliders move along {N_SLIDERS} fixed random "
                    "ones (add directions with `dcgan-deploy directions MODEL.onnx --labelled`).")
        counts = collections.Counter(d.method for d in gen.directions)
        return ("Directions from the model file: " + ", ".join(
            f"{n} {'SeFa (the first layer’s top singular vectors)' if m == 'sefa' else 'labelled by the domain classifier'}"
            for m, n in counts.items()) + ". Pick one per slider.")

    def edit_choices(self, name):
        """For a model change: the note, each slider's direction choices and first pick, then the class
        picker's choices (a conditional model's classes; hidden for others)."""
        import gradio as gr
        names = [d.name for d in self.directions(name)]
        picks = [gr.update(choices=names, value=names[i % len(names)]) for i in range(N_SLIDERS)]
        classes = self.class_choices(name)
        return (self.model_info(name), self.direction_note(name), *picks,
                gr.update(choices=classes, value=classes[0], visible=len(classes) > 1))

    def class_choices(self, name) -> list[str]:
        """The class picker's choices: the seed's classes in turn, then each class of a conditional model."""
        return [SEED_CLASSES, *self.generator(name).classes]

    def chosen_class(self, name, label):
        """The picker's value -> a class for ``Generator.generate`` (``None``: the seed's, in turn)."""
        gen = self.generator(name)
        if label in (None, "", SEED_CLASSES) or not gen.classes:
            if label not in (None, "", SEED_CLASSES):
                raise DemoInputError(f"{name} is not class-conditional: it takes no class")
            return None
        if label not in gen.classes:
            raise DemoInputError(f"unknown class {str(label)[:60]!r}; this model's classes are {', '.join(gen.classes)}")
        return label

    # ---- handlers -------------------------------------------------------------------
    def seed_grid(self, name, seed, side, psi=1.0, label=None):
        """-> (grid image, caption) for ``side * side`` images of ``seed`` (of one class: ``label``)."""
        seed = as_int(seed, "seed", 0, MAX_SEED)
        side = as_int(side, "grid size", 1, GRID_SIDE)
        psi = as_float(psi, "truncation", 0.05, 1.0)
        label = self.chosen_class(name, label)
        gen = self.generator(name)
        n = side * side
        images = gen.generate(n, seed=seed, truncation=psi, label=label)
        return for_display(grid(images, nrow=side)), (
            f"{n} images, seed {seed}" + (f", class {label}" if label is not None else "")
            + f". Same as: `dcgan-deploy generate -m {name} -n {n} --seed {seed}"
            + (f" --truncation {psi:g}" if psi != 1.0 else "") + (f" --label {label}" if label is not None else "")
            + " -o grid.png`")

    def interpolate(self, name, seed_a, seed_b, frames, method, psi=1.0):
        """-> (frames for a gallery, path of an animated GIF). ``frames``: from one seed to the next, as in
        ``dcgan-deploy interpolate --frames``; the walk shows ``frames + 1`` images."""
        seed_a = as_int(seed_a, "start seed", 0, MAX_SEED)
        seed_b = as_int(seed_b, "end seed", 0, MAX_SEED)
        frames = as_int(frames, "frames", 1, WALK_FRAMES)
        psi = as_float(psi, "truncation", 0.05, 1.0)
        if method not in ("slerp", "lerp"):
            raise DemoInputError(f"method must be slerp or lerp, got {str(method)[:40]!r}")
        gen = self.generator(name)
        images = gen.interpolate([seed_a, seed_b], frames, method, psi)
        gif = self._new_file(f"interpolation-{seed_a}-{seed_b}.gif")
        save_gif(images, gif, scale=max(1, 256 // gen.height))
        return [for_display(img) for img in images], str(gif)

    def edit(self, name, seed, index, *picks):
        """Move image ``index`` of ``seed``'s grid along the chosen directions -> (image, latent .npy, caption).
        ``picks``: (direction name, strength) for each slider."""
        seed = as_int(seed, "seed", 0, MAX_SEED)
        index = as_int(index, "sample", 0, GRID_SIDE * GRID_SIDE - 1)
        if len(picks) != 2 * N_SLIDERS:
            raise DemoInputError(f"expected {N_SLIDERS} directions and strengths, got {len(picks)} values")
        available = {d.name: d for d in self.directions(name)}
        moves = []
        for i in range(N_SLIDERS):
            key, strength = picks[2 * i], picks[2 * i + 1]
            if key not in available:
                raise DemoInputError(f"slider {i + 1}: unknown direction {str(key)[:60]!r}; this model has "
                                     f"{', '.join(available)}")
            moves.append((available[key], as_float(strength, f"slider {i + 1}", -SLIDER_STRENGTH, SLIDER_STRENGTH)))
        gen = self.generator(name)
        z = gen.latent(seed, index) + sum(s * d.vector for d, s in moves)  # [D]
        z = z[None].astype(np.float32)                                                # [1, D]
        label = None if not gen.classes else gen.labels(index + 1, seed)[index:]  # the sample's class in the grid
        image = to_uint8(gen.run(z, label))[0]
        npy = self._new_file(f"latent-seed{seed}-sample{index}.npy")
        np.save(npy, z)
        moved = ", ".join(f"{d.name} {s:+.2f}" for d, s in moves if s)
        return for_display(image), str(npy), (
            f"Sample {index} of seed {seed}" + (f", moved by {moved}" if moved else "") + ". Reproduce it: "
            f"`dcgan-deploy generate -m {name} --latents {npy.name}"
            + (f" --label {gen.classes[int(label[0])]}" if label is not None else "") + " -o edited.png`")

    # ---- files ----------------------------------------------------------------------
    def _new_file(self, name: str) -> Path:
        """A fresh path in the demo's folder; the oldest files go once ``KEEP_FILES`` exist."""
        with self._lock:
            folder = Path(tempfile.mkdtemp(dir=self.tmp))
            path = folder / name
            self._files.append(folder)
            while len(self._files) > KEEP_FILES:
                shutil.rmtree(self._files.popleft(), ignore_errors=True)
        return path

    def prune_cache(self, limit: int = MAX_CACHE_BYTES) -> None:
        """Keep Gradio's cache of served files (inside the demo's folder) under ``limit`` bytes, oldest out first.
        At most once a second: a scan of a few hundred files."""
        now = time.monotonic()
        with self._lock:
            if now - self._pruned < 1.0:
                return
            self._pruned = now
        cache = self.tmp / "gradio"
        if not cache.is_dir():
            return
        files = []
        for p in cache.rglob("*"):
            try:
                if p.is_file():
                    st = p.stat()
                    files.append((st.st_mtime, st.st_size, p))
            except OSError:
                continue
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total <= limit:
                break
            try:
                p.unlink()
                total -= size
            except OSError:
                pass

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the page -------------------------------------------------------------------
    def build(self):
        """The Gradio Blocks app (queue configured, analytics off)."""
        configure_environment(self.tmp)
        import gradio as gr

        def safe(fn):
            def wrapper(*args):
                try:
                    return fn(*args)
                except (ValueError, OverflowError, TypeError) as e:  # DemoInputError and the runtime's checks
                    message = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                    log.warning("rejected %s: %s", fn.__name__, message)
                    raise gr.Error(message, duration=8, print_exception=False) from None
                finally:
                    self.prune_cache()
            wrapper.__name__ = fn.__name__
            return wrapper

        names = list(self.models)
        first_directions = [d.name for d in self.directions(names[0])]
        with gr.Blocks(title="dcgan-deploy latent explorer", analytics_enabled=False,
                       delete_cache=(300, 600)) as app:
            gr.Markdown("# DCGAN latent explorer\nEvery image comes from a random vector (the *latent*) fed to the "
                        "generator. A seed fixes the latents, so the same seed always gives the same images.")
            with gr.Row():
                model = gr.Dropdown(names, value=names[0], label="Model", scale=1)
                info = gr.Markdown(self.model_info(names[0]), elem_id="model-info")
            with gr.Tab("Seed grid"):
                with gr.Row():
                    seed = gr.Textbox("0", label="Seed (0 to 2**64 - 1)", max_lines=1, elem_id="seed")
                    rand = gr.Button("Random seed", elem_id="random-seed")
                    side = gr.Slider(1, GRID_SIDE, 8, step=1, label="Images per side")
                    psi = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Truncation ψ (1 = off; lower = more typical)")
                    first_classes = self.class_choices(names[0])
                    label = gr.Dropdown(first_classes, value=first_classes[0], label="Class",
                                        visible=len(first_classes) > 1, elem_id="class")
                go = gr.Button("Generate grid", variant="primary", elem_id="grid-button")
                grid_out = gr.Image(label="Samples", type="numpy", format="png", interactive=False, elem_id="grid-image")
                grid_note = gr.Markdown()
            with gr.Tab("Interpolation"):
                gr.Markdown("Walk from one seed's first image to another's: *slerp* follows the sphere where "
                            "Gaussian latents live, *lerp* a straight line.")
                with gr.Row():
                    seed_a = gr.Textbox("0", label="From seed", max_lines=1)
                    seed_b = gr.Textbox("1", label="To seed", max_lines=1)
                    frames = gr.Slider(1, WALK_FRAMES, 9, step=1, label="Frames from one seed to the next")
                    method = gr.Radio(["slerp", "lerp"], value="slerp", label="Method")
                    i_psi = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Truncation ψ")
                interp = gr.Button("Interpolate", variant="primary", elem_id="interp-button")
                gallery = gr.Gallery(label="Frames", columns=10, height="auto", format="png", elem_id="interp-frames")
                gif = gr.File(label="Animated GIF (download)", elem_id="interp-gif")
            with gr.Tab("Latent editing"):
                d_note = gr.Markdown(self.direction_note(names[0]), elem_id="direction-note")
                gr.Markdown("Pick a sample from a seed's grid (0 = top left) and push its latent along the chosen "
                            "directions.")
                with gr.Row():
                    e_seed = gr.Textbox("0", label="Seed", max_lines=1)
                    e_index = gr.Slider(0, GRID_SIDE * GRID_SIDE - 1, 0, step=1, label="Sample")
                pickers, sliders = [], []
                for i in range(N_SLIDERS):
                    with gr.Row():
                        pickers.append(gr.Dropdown(first_directions, value=first_directions[i % len(first_directions)],
                                                   label=f"Direction {i + 1}", elem_id=f"direction-{i + 1}"))
                        sliders.append(gr.Slider(-SLIDER_STRENGTH, SLIDER_STRENGTH, 0, step=0.1, label="Strength",
                                                 elem_id=f"strength-{i + 1}"))
                apply = gr.Button("Apply", variant="primary", elem_id="edit-button")
                with gr.Row():
                    e_out = gr.Image(label="Edited sample", type="numpy", format="png", interactive=False,
                                     elem_id="edit-image")
                    e_file = gr.File(label="Its latent (.npy)")
                e_note = gr.Markdown()

            # preprocess=False: handlers get the raw values the client sent (Gradio would otherwise
            # round 2.5 to 2 or fail on NaN without a message) and validate them themselves.
            raw = {"preprocess": False}
            model.change(safe(self.edit_choices), model, [info, d_note, *pickers, label], api_name="model_info", **raw)
            rand.click(lambda: str(random_seed()), None, seed, api_name="random_seed")
            # the class picker reaches the handler through per-session state, so the "grid" API keeps its four
            # inputs (an API call gets the seed's classes in turn)
            picked = gr.State(None)
            label.change(lambda value: value, label, picked, api_name=False, **raw)
            go.click(safe(self.seed_grid), [model, seed, side, psi, picked], [grid_out, grid_note], api_name="grid",
                     **raw)
            interp.click(safe(self.interpolate), [model, seed_a, seed_b, frames, method, i_psi], [gallery, gif],
                         api_name="interpolate", **raw)
            edit_inputs = [model, e_seed, e_index, *[c for pair in zip(pickers, sliders) for c in pair]]
            for trigger in [e_seed.submit, e_index.release, *[s.release for s in sliders]]:
                trigger(safe(self.edit), edit_inputs, [e_out, e_file, e_note], api_name=False, **raw)
            apply.click(safe(self.edit), edit_inputs, [e_out, e_file, e_note], api_name="edit", **raw)
        app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
        return app

    def launch(self, app, **kwargs):
        """``app.launch`` with the demo's bounds: no uploads beyond 1 MB, little per-session state."""
        return app.launch(max_file_size="1mb", state_session_capacity=SESSIONS, show_error=True, footer_links=[],
                          **kwargs)


def _short(text: str, limit: int = 60) -> str:
    from .modelfile import printable
    text = printable(text, 400)
    return text if len(text) <= limit else "…" + text[-limit:]


def launch(models=(), host: str = "127.0.0.1", port: int = 7860, share: bool = False, auth: str | None = None,
          device: str = "auto") -> None:
    """``dcgan-deploy demo``: check the models now (not in the browser), then serve until stopped."""
    credentials = parse_auth(auth)
    picked = bundled.pick(models, with_bundled=True)
    demo = Demo(picked, device=device)
    try:
        for name in list(picked)[:max(1, len(models))]:  # the given models (or the default): fail now if unusable
            demo.generator(name)
        demo.launch(demo.build(), server_name=host, server_port=port, share=share, auth=credentials)
    finally:
        demo.cleanup()


def launch_warnings(host: str, share: bool, auth: str | None) -> list[str]:
    """What to warn about before exposing the demo beyond this machine."""
    out = []
    if (share or not bundled.is_loopback(host)) and not auth:
        where = "a public share link" if share else f"{host} (reachable from other machines)"
        out.append(f"the demo will be served on {where} without --auth: anyone who can reach it can use it")
    return out


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    if auth is None:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth must be USER:PASS")
    return user, password


def configure_environment(tmp: Path) -> None:
    """Analytics off, and Gradio's own cache inside the demo's temporary folder."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp / "gradio"))
