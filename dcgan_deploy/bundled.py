"""The models that ship with the package (``exports/`` in the source tree)."""
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
