"""The Gradio latent-space demo: seed grids, interpolation and latent editing.

Runs on the runtime (numpy + onnxruntime). Every handler re-validates its inputs on
the server; the browser's slider limits are not trusted. Files the demo writes live in
its own temporary folder, a bounded number at a time, removed when it exits.
"""
from __future__ import annotations

import atexit
import collections
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from .images import grid, save_gif, to_uint8
from .latent import path as latent_path
from .runtime import Generator

MAX_SEED = 2**32 - 1
MAX_SIDE = 12          # grid of at most 12 x 12 images
MAX_FRAMES = 60        # interpolation frames
N_DIRECTIONS = 4       # latent-editing sliders
MAX_STRENGTH = 5.0
KEEP_FILES = 64        # demo output files kept on disk at once
QUEUE_SIZE = 16
CONCURRENCY = 2
DISPLAY_PIXELS = 512   # images are scaled up (nearest) to about this size for display


class DemoInputError(ValueError):
    """A request the demo refuses; the message is shown to the user."""


def as_int(value, name: str, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from what the browser sent (int, integral float or digit string)."""
    if isinstance(value, bool) or value is None:
        raise DemoInputError(f"{name} must be a whole number between {lo} and {hi}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise DemoInputError(f"{name} must be a whole number, got {value!r}") from None
    if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise DemoInputError(f"{name} must be a whole number, got {value!r}")
    if value != int(value):
        raise DemoInputError(f"{name} must be a whole number, got {value}")
    if not lo <= value <= hi:
        raise DemoInputError(f"{name} must be between {lo} and {hi}, got {int(value)}")
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
        atexit.register(self.cleanup)

    # ---- models ---------------------------------------------------------------------
    def generator(self, name) -> Generator:
        if name not in self.models:
            raise DemoInputError(f"unknown model {name!r}; choose one of {', '.join(self.models)}")
        with self._lock:
            if name not in self._generators:
                self._generators[name] = Generator.load(self.models[name], device=self.device)
            return self._generators[name]

    def model_info(self, name) -> str:
        gen = self.generator(name)
        m = gen.metadata
        parity = gen.parity
        verdict = ("passed" if parity.get("passed") else "not proven") if parity else "no report"
        if "precision" in m and parity.get("passed"):  # a reduced-precision variant passes a PSNR gate
            verdict += f" ({m['precision']}, PSNR ≥ {parity['worst']['psnr']:.1f} dB)"
        return (f"**{m['architecture']}** trained on `{m.get('dataset', '?')}` for {m.get('train_step', '?')} steps · "
                f"{gen.channels}×{gen.height}×{gen.width} images from a {gen.latent_dim}-d {gen.latent_prior} latent · "
                f"runs on **{gen.device.upper()}** ({gen.provider}) · export parity: {verdict}")

    def directions(self, name) -> np.ndarray:
        """``N_DIRECTIONS`` orthonormal latent directions ``[K, D]``, fixed per model (seed 0)."""
        gen = self.generator(name)
        q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((gen.latent_dim, N_DIRECTIONS)))
        return q.T.astype(np.float32)

    # ---- handlers -------------------------------------------------------------------
    def seed_grid(self, name, seed, side):
        """-> (grid image, caption) for ``side * side`` images of ``seed``."""
        seed = as_int(seed, "seed", 0, MAX_SEED)
        side = as_int(side, "grid size", 1, MAX_SIDE)
        gen = self.generator(name)
        n = side * side
        images = gen.generate(n, seed=seed)
        return for_display(grid(images, nrow=side)), (
            f"{n} images, seed {seed}. Same as: `dcgan-deploy generate -m {name} -n {n} --seed {seed} -o grid.png`")

    def interpolate(self, name, seed_a, seed_b, frames, method):
        """-> (frames for a gallery, path of an animated GIF)."""
        seed_a = as_int(seed_a, "start seed", 0, MAX_SEED)
        seed_b = as_int(seed_b, "end seed", 0, MAX_SEED)
        frames = as_int(frames, "frames", 2, MAX_FRAMES)
        if method not in ("slerp", "lerp"):
            raise DemoInputError(f"method must be slerp or lerp, got {method!r}")
        gen = self.generator(name)
        z = latent_path([gen.latents(1, seed_a)[0], gen.latents(1, seed_b)[0]], frames - 1, method)
        images = to_uint8(gen.run(z))
        gif = self._new_file(f"interpolation-{seed_a}-{seed_b}.gif")
        save_gif(images, gif, scale=max(1, 256 // gen.height))
        return [for_display(img) for img in images], str(gif)

    def edit(self, name, seed, index, *strengths):
        """Move image ``index`` of ``seed``'s grid along the fixed directions -> (image, latent .npy, caption)."""
        seed = as_int(seed, "seed", 0, MAX_SEED)
        index = as_int(index, "sample", 0, MAX_SIDE * MAX_SIDE - 1)
        if len(strengths) != N_DIRECTIONS:
            raise DemoInputError(f"expected {N_DIRECTIONS} strengths, got {len(strengths)}")
        s = np.array([as_float(v, f"direction {i + 1}", -MAX_STRENGTH, MAX_STRENGTH) for i, v in enumerate(strengths)],
                     np.float32)
        gen = self.generator(name)
        z = gen.latents(index + 1, seed)[index] + s @ self.directions(name)  # [D]
        z = z[None].astype(np.float32)                                      # [1, D]
        image = to_uint8(gen.run(z))[0]
        npy = self._new_file(f"latent-seed{seed}-sample{index}.npy")
        np.save(npy, z)
        return for_display(image), str(npy), (
            f"Sample {index} of seed {seed}, moved by {np.round(s, 2).tolist()}. Reproduce it: "
            f"`dcgan-deploy generate -m {name} --latents {npy.name} -o edited.png`")

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
                except ValueError as e:  # DemoInputError and the runtime's input checks
                    raise gr.Error(str(e), duration=8) from None
            wrapper.__name__ = fn.__name__
            return wrapper

        names = list(self.models)
        with gr.Blocks(title="dcgan-deploy latent explorer", analytics_enabled=False,
                       delete_cache=(600, 1800)) as app:
            gr.Markdown("# DCGAN latent explorer\nEvery image comes from a random vector (the *latent*) fed to the "
                        "generator. A seed fixes the latents, so the same seed always gives the same images.")
            with gr.Row():
                model = gr.Dropdown(names, value=names[0], label="Model", scale=1)
                info = gr.Markdown(self.model_info(names[0]), elem_id="model-info")
            with gr.Tab("Seed grid"):
                with gr.Row():
                    seed = gr.Number(0, label="Seed", minimum=0, maximum=MAX_SEED, elem_id="seed")
                    rand = gr.Button("Random seed", elem_id="random-seed")
                    side = gr.Slider(1, MAX_SIDE, 8, step=1, label="Images per side")
                go = gr.Button("Generate grid", variant="primary", elem_id="grid-button")
                grid_out = gr.Image(label="Samples", type="numpy", format="png", interactive=False, elem_id="grid-image")
                grid_note = gr.Markdown()
            with gr.Tab("Interpolation"):
                gr.Markdown("Walk from one seed's first image to another's: *slerp* follows the sphere where "
                            "Gaussian latents live, *lerp* a straight line.")
                with gr.Row():
                    seed_a = gr.Number(0, label="From seed", minimum=0, maximum=MAX_SEED)
                    seed_b = gr.Number(1, label="To seed", minimum=0, maximum=MAX_SEED)
                    frames = gr.Slider(2, MAX_FRAMES, 10, step=1, label="Frames")
                    method = gr.Radio(["slerp", "lerp"], value="slerp", label="Method")
                interp = gr.Button("Interpolate", variant="primary", elem_id="interp-button")
                gallery = gr.Gallery(label="Frames", columns=10, height="auto", format="png", elem_id="interp-frames")
                gif = gr.File(label="Animated GIF (download)", elem_id="interp-gif")
            with gr.Tab("Latent editing"):
                gr.Markdown(f"Pick a sample from a seed's grid (0 = top left) and push its latent along "
                            f"{N_DIRECTIONS} fixed random orthogonal directions.")
                with gr.Row():
                    e_seed = gr.Number(0, label="Seed", minimum=0, maximum=MAX_SEED)
                    e_index = gr.Slider(0, MAX_SIDE * MAX_SIDE - 1, 0, step=1, label="Sample")
                sliders = [gr.Slider(-MAX_STRENGTH, MAX_STRENGTH, 0, step=0.1, label=f"Direction {i + 1}")
                           for i in range(N_DIRECTIONS)]
                apply = gr.Button("Apply", variant="primary", elem_id="edit-button")
                with gr.Row():
                    e_out = gr.Image(label="Edited sample", type="numpy", format="png", interactive=False,
                                     elem_id="edit-image")
                    e_file = gr.File(label="Its latent (.npy)")
                e_note = gr.Markdown()

            # preprocess=False: handlers get the raw values the client sent (Gradio would otherwise
            # round 2.5 to 2 or fail on NaN without a message) and validate them themselves.
            raw = {"preprocess": False}
            model.change(safe(self.model_info), model, info, api_name="model_info", **raw)
            rand.click(lambda: int(np.random.default_rng().integers(0, MAX_SEED)), None, seed, api_name="random_seed")
            go.click(safe(self.seed_grid), [model, seed, side], [grid_out, grid_note], api_name="grid", **raw)
            interp.click(safe(self.interpolate), [model, seed_a, seed_b, frames, method], [gallery, gif],
                         api_name="interpolate", **raw)
            edit_inputs = [model, e_seed, e_index, *sliders]
            for trigger in [e_seed.submit, e_index.release, *[s.release for s in sliders]]:
                trigger(safe(self.edit), edit_inputs, [e_out, e_file, e_note], api_name=False, **raw)
            apply.click(safe(self.edit), edit_inputs, [e_out, e_file, e_note], api_name="edit", **raw)
        app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
        return app


def launch_warnings(host: str, share: bool, auth: str | None) -> list[str]:
    """What to warn about before exposing the demo beyond this machine."""
    out = []
    loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    if (share or not loopback) and not auth:
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
