"""The models that ship with the package (``exports/`` in the source tree), and the one way the front
ends pick models by name or path."""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "mnist"


def exports_dir() -> Path:
    """The folder holding the shipped ``.onnx`` files, installed or in a source checkout."""
    try:
        from . import exports  # installed as a subpackage (see pyproject's package-dir)
        return Path(exports.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parent.parent / "exports"


def bundled_models() -> dict[str, Path]:
    """Name -> path of every shipped model (name = file stem), the default first: ``mnist``, then
    the others by name (its int8 variant ``mnist-int8``)."""
    models = {p.stem: p for p in sorted(exports_dir().glob("*.onnx"))}
    return dict(sorted(models.items(), key=lambda kv: kv[0] != DEFAULT_MODEL))  # the default first


def resolve(model: str | Path | None) -> Path:
    """A model argument -> a path: ``None`` is the default, a bare name a bundled model."""
    if model is None:
        model = DEFAULT_MODEL
    text = str(model)
    if isinstance(model, Path) or text.endswith(".onnx") or "/" in text or "\\" in text:
        return Path(model)
    models = bundled_models()
    if text in models:
        return models[text]
    if Path(text).exists():
        return Path(text)
    known = ", ".join(models) or "none are installed"
    raise FileNotFoundError(f"no model file or bundled model named {text!r} (bundled: {known})")


def pick(models=(), with_bundled: bool = False) -> dict[str, Path]:
    """The one model picker of the front ends (``serve``, ``web``, the demo): model arguments (paths or
    bundled names) -> {name: path}, named by file stem, in the order given; none given: every bundled
    model. ``with_bundled`` (the demo's picker) adds the bundled models after the given ones, each
    unless its name is taken. Two given models with one name are refused."""
    chosen: dict[str, Path] = {}
    for path in map(resolve, models):
        if path.stem in chosen and chosen[path.stem].resolve() != path.resolve():
            raise ValueError(f"two models are named {path.stem!r}; rename one")
        chosen[path.stem] = path
    if not models or with_bundled:
        chosen.update({k: v for k, v in bundled_models().items() if k not in chosen})
    return chosen


LOOPBACK_NAMES = ("localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps a server on this machine (127.0.0.0/8, ::1, localhost)."""
    return host in LOOPBACK_NAMES or host.startswith("127.")

