"""The bundled models' trained weights, for the benchmarks and the tests: in the tree, or in the commit a
model's record names (training/<model>/RECORD.md). Standard library only, but for ``recorded_model``."""
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Trained weights of the bundled models: in the tree, or in the commit a model's record names.
WEIGHTS = {"mnist": ("acdfaab789c709b68567d879b3e95c898c1a4a22", "training/mnist/generator.safetensors"),
           "emoji64": ("a3b9021033dc2a6ea80ec7b1712e5620be945df1", "training/emoji64/generator.safetensors"),
           "mnist-cond": ("e936a8abedea4e416080a21512585de749b6f928", "training/mnist-cond/generator.safetensors")}


def recorded_weights(name: str, folder: Path) -> Path | None:
    """A bundled model's trained weights (``generator.safetensors``): from the tree, or taken out of the commit
    its record names into ``folder``; ``None`` where this is not a git checkout holding that commit."""
    commit, path = WEIGHTS[name]
    if commit is None:
        return ROOT / path
    try:
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], capture_output=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    out = Path(folder) / f"{name}.safetensors"
    out.write_bytes(blob)
    return out


def recorded_model(name: str):
    """A bundled model's trained generator (torch, eval mode), for the benchmarks that start from it; exits
    with one line where this is not a git checkout holding its weights."""
    from dcgan_deploy.checkpoint import open_checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        path = recorded_weights(name, Path(tmp))
        if path is None:
            raise SystemExit(f"{name}'s trained weights are in commit {WEIGHTS[name][0]}: run this from a git "
                             "checkout of the project")
        return open_checkpoint(path).model
