"""The layout's rules (docs/DESIGN.md): which modules may need torch, and which may import which.

- Torch-free modules never import a torch-side module of ours -- not even inside a function -- nor
  torch or onnx; the command line is the one edge that dispatches to both sides.
- Importing the runtime loads numpy and onnxruntime only (no Pillow, torch, onnx, click, tqdm).
- The design document lists every module, and says of each whether it needs torch.
- No import cycles among our modules, counting imports inside functions.
"""
import ast
import re
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "dcgan_deploy"
TORCH_SIDE = {"nets", "augment", "checkpoint", "train", "recipe", "losses", "parallel", "export", "forms", "parity",
              "inception"}
NEEDS_ONNX = {"triton"}  # torch-free, but writes its graph with the onnx package (lazily, as export runs it)
EDGE = {"cli", "__main__"}
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))
TORCH_FREE = sorted(set(MODULES) - TORCH_SIDE - EDGE)
RUNTIME_CORE = ["__init__", "runtime", "modelfile", "latent", "images", "files", "bundled", "edits"]


def imports_of(module: str) -> set[str]:
    """Every module an import statement in ``module`` names, at any depth (functions included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .x import y
                names |= {f"dcgan_deploy.{node.module}"} if node.module else {f"dcgan_deploy.{a.name}" for a in node.names}
            else:
                names.add(node.module)
    return names


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules_import_nothing_of_the_torch_side(module):
    named = imports_of(module)
    ours = {n.split(".")[1] for n in named if n.startswith("dcgan_deploy.")}
    assert not ours & TORCH_SIDE, f"{module} imports {ours & TORCH_SIDE}"
    banned = {"torch", "safetensors", "onnxscript"} | ({"onnx"} if module not in NEEDS_ONNX else set())
    assert not {n.split(".")[0] for n in named} & banned


def test_importing_each_torch_free_module_loads_no_torch():
    code = ("import importlib, sys\n"
            f"for m in {TORCH_FREE!r}: importlib.import_module('dcgan_deploy.' + m if m != '__init__' else 'dcgan_deploy')\n"
            "print(','.join(m for m in ('torch', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_the_runtime_needs_numpy_and_onnxruntime_only():
    code = ("import sys\n"
            + "".join(f"import dcgan_deploy.{m}\n" for m in RUNTIME_CORE if m != "__init__")
            + "print(','.join(m for m in ('PIL', 'torch', 'onnx', 'gradio', 'click', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_the_design_lists_every_module_and_what_it_needs():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)\.py` \| ([^|]+) \|", design, re.M))
    assert set(rows) == set(MODULES) - {"__init__", "__main__"}
    for module, needs in rows.items():
        assert ("torch" in needs) == (module in TORCH_SIDE), (module, needs)


def test_no_module_imports_itself_through_others():
    """The modules' imports, at any depth, form no cycle (the package's ``__init__`` re-exports, so it is left out:
    a module naming the package means one of its modules, and that module is named directly)."""
    graph = {m: {n.split(".")[1] for n in imports_of(m) if n.startswith("dcgan_deploy.")} & set(MODULES) - {m, "__init__"}
             for m in MODULES if m != "__init__"}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module not in done:
            for other in sorted(graph[module]):
                visit(other, path + [module])
            done.add(module)

    for module in graph:
        visit(module, [])


def test_no_module_is_named_utils_or_helpers():
    assert not {"utils", "helpers", "misc", "common"} & set(MODULES)
