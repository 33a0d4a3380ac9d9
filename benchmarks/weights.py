"""The bundled models' trained weights, for the benchmarks and the tests: in the tree, or in the commit a
model's record names (training/<model>/RECORD.md). Standard library only."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Trained weights of the bundled models: in the tree, or in the commit a model's record names.
WEIGHTS = {"mnist": (None, "training/mnist/generator.safetensors"),
           "emoji64": ("a3b9021033dc2a6ea80ec7b1712e5620be945df1", "training/emoji64/generator.safetensors"),
           "mnist-cond": ("64404acd4d9c73f3bc0fd0346276d63d873b0c31", "training/mnist-cond/generator.safetensors")}


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
