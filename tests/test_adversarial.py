"""Hostile and careless inputs, table-driven: every case gets one clear line on stderr naming what was
wrong, a non-zero exit, and nothing written or changed -- or, where the input is legitimate, the right
output. New commands add their cases here, so every feature inherits the same bar.

Files are made by the fixtures below (no torch needed for the model files; the checkpoint and recipe
cases need torch, as the commands they exercise do)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model, recorded_weights
from dcgan_deploy.cli import main

torch = pytest.importorskip("torch")


def model_with(tmp: Path, name: str, metadata=None, drop=(), **kwargs) -> Path:
    return make_model(tmp / f"{name}.onnx", metadata=metadata, drop=drop, **kwargs)


def random_op_model(path: Path) -> Path:
    """A contract-following file whose image gets noise from RandomUniformLike before the output."""
    make_model(path)
    m = onnx.load(str(path))
    g = m.graph
    reshape = g.node[-1]
    reshape.output[0] = "clean"
    g.node.extend([helper.make_node("RandomUniformLike", ["clean"], ["noise"], low=-0.01, high=0.01),
                   helper.make_node("Add", ["clean", "noise"], ["image"])])
    onnx.save(m, str(path))
    return path


def nan_model(path: Path, **kwargs) -> Path:
    make_model(path, **kwargs)
    m = onnx.load(str(path))
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w[0, 0] = np.nan
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
    onnx.save(m, str(path))
    return path


def tiny_checkpoint(path):
    """A small untrained mnist-dcgan generator file, for the export's argument checks."""
    import torch

    from dcgan_deploy.checkpoint import save_generator
    from dcgan_deploy.nets import GeneratorNet, NetConfig
    cfg = NetConfig.for_arch("mnist-dcgan", g_width=8, d_width=8)
    torch.manual_seed(0)
    save_generator(GeneratorNet(cfg).state_dict(), cfg, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    f = {
        "good": make_model(tmp / "good.onnx"),
        "ckpt": tiny_checkpoint(tmp / "generator.safetensors"),
        "random_op": random_op_model(tmp / "random_op.onnx"),
        "nan_weights": nan_model(tmp / "nan_weights.onnx"),
        "nan28": nan_model(tmp / "nan28.onnx", height=28, width=28),
        "big_images": make_model(tmp / "big_images.onnx", channels=3, height=64, width=64),
        "parity_list": model_with(tmp, "parity_list", {"parity": "[1, 2]"}),
        "parity_string": model_with(tmp, "parity_string", {"parity": '"passed"'}),
        "parity_nan": model_with(tmp, "parity_nan", {"parity": '{"passed": true, "worst": {"max_abs": NaN}}'}),
        "parity_bad_type": model_with(tmp, "parity_bad_type", {"parity": '{"passed": "yes"}'}),
        "evaluation_keys": model_with(tmp, "evaluation_keys", {"evaluation": '{"fid": 1.0}'}),
        "evaluation_json": model_with(tmp, "evaluation_json", {"evaluation": "{not json"}),
        "directions_bad": model_with(tmp, "directions_bad", {"directions": json.dumps(
            {"version": 1, "directions": [{"name": "a", "method": "sefa", "vector": [1.0, 0.0]}]})}),
        "directions_huge_number": model_with(tmp, "directions_huge_number", {"directions": json.dumps(
            {"version": 1, "directions": [{"name": "a", "method": "sefa", "vector": [10**400] + [0.0] * 7}]})}),
        "parity_deep": model_with(tmp, "parity_deep", {"parity": "[" * 100000 + "]" * 100000}),
        "directions_deep": model_with(tmp, "directions_deep", {"directions": '{"a":' * 100000 + "1" + "}" * 100000}),
        "huge_latent": model_with(tmp, "huge_latent", {"latent_dim": "1000000000"}),
        "channels_7": model_with(tmp, "channels_7", {"channels": "7"}),
        "escape_codes": model_with(tmp, "escape_codes", {"dataset": "evil\x1b[2J\rname\nline"}),
    }
    z0 = tmp / "zero_rows.npy"
    np.save(z0, np.zeros((0, 8), np.float32))
    f["zero_rows"] = z0
    np.save(tmp / "zero_d.npy", np.float32(1.0))
    f["zero_d"] = tmp / "zero_d.npy"
    np.savez(tmp / "latents.npz", z=np.zeros((2, 8), np.float32))
    f["npz"] = tmp / "latents.npz"
    big = tmp / "huge_header.npy"
    with open(big, "wb") as fh:  # a header claiming 10**12 rows over a few bytes of data
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 8)})
        fh.write(b"\0" * 64)
    f["huge_header"] = big
    f["empty"] = tmp / "empty.onnx"
    f["empty"].write_bytes(b"")
    f["empty_pth"] = tmp / "empty.pth"
    f["empty_pth"].write_bytes(b"")
    f["garbage"] = tmp / "garbage.onnx"
    f["garbage"].write_bytes(os.urandom(3000))
    good_z = tmp / "z.npy"
    np.save(good_z, np.zeros((3, 8), np.float32))
    f["z"] = good_z
    return f


def run(args, cwd: Path):
    """The CLI in this process, from ``cwd``; (exit code, stderr, files in cwd afterwards)."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        r = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)
    return r.exit_code, r.stderr, sorted(p.name for p in cwd.iterdir())


# (id, argv with {file} names filled from the fixture, a phrase the one error line must hold)
CASES = [
    # integrity
    ("random-op graph", ["generate", "-m", "{random_op}", "-n", 4, "-o", "x.npy"], "random or training-only ops"),
    ("nan weights: generate", ["generate", "-m", "{nan_weights}", "-n", 8, "-o", "x.npy"], "NaN or infinite"),
    ("nan weights: grid", ["generate", "-m", "{nan_weights}", "-n", 8, "-o", "x.png"], "NaN or infinite"),
    ("nan weights: interpolate", ["interpolate", "-m", "{nan_weights}", "-o", "walk"], "NaN or infinite"),
    ("nan weights: evaluate", ["evaluate", "{nan28}", "-n", 200], "NaN or infinite"),
    # resources
    ("threads", ["generate", "-m", "{good}", "--threads", 100000, "-o", "x.png"], "use at most"),
    ("batch size", ["generate", "-m", "{good}", "--batch-size", 10**9, "-o", "x.npy"], "use at most"),
    ("n huge", ["generate", "-m", "{good}", "-n", 10**12, "-o", "x.npy"], "generate them in parts"),
    ("n beyond disk", ["generate", "-m", "{big_images}", "-n", 10**8, "-o", "x.npy"], "GB are free"),
    ("evaluate n", ["evaluate", "{good}", "-n", 10**9], "-n 1000000000 is more than"),
    ("gif duration", ["interpolate", "-m", "{good}", "--duration", 700000, "-o", "walk"], "--duration must be"),
    ("frames", ["interpolate", "-m", "{good}", "--frames", 10**6, "-o", "walk"], "limit is 1000"),
    ("bench seconds inf", ["bench", "-m", "{good}", "--seconds", "inf"], "--seconds must be from"),
    ("bench seconds nan", ["bench", "-m", "{good}", "--seconds", "nan"], "--seconds must be from"),
    # untrusted metadata
    ("parity a list: generate", ["generate", "-m", "{parity_list}", "-o", "x.png"], "'parity' must be a JSON object"),
    ("parity a list: info", ["info", "{parity_list}"], "'parity' must be a JSON object"),
    ("parity a string", ["info", "{parity_string}", "--json"], "'parity' must be a JSON object"),
    ("parity NaN", ["info", "{parity_nan}", "--json"], "'parity' is not valid JSON"),
    ("parity wrong type", ["info", "{parity_bad_type}"], "parity.passed has the wrong type"),
    ("evaluation missing keys", ["info", "{evaluation_keys}"], "'evaluation' lacks"),
    ("evaluation not JSON", ["generate", "-m", "{evaluation_json}", "-o", "x.png"], "'evaluation' is not valid JSON"),
    ("directions wrong size", ["info", "{directions_bad}"], "vector must be 8 finite numbers"),
    ("directions 400-digit number", ["info", "{directions_huge_number}"], "a's vector must be 8 finite numbers"),
    ("parity nested deep: info", ["info", "{parity_deep}"], "metadata 'parity' is not valid JSON (nested too deeply)"),
    ("parity nested deep: generate", ["generate", "-m", "{parity_deep}", "-o", "x.png"], "nested too deeply"),
    ("directions nested deep: edit", ["edit", "-m", "{directions_deep}", "--seed", 1, "--direction", "a", "-o", "e.png"],
     "metadata 'directions' is not valid JSON (nested too deeply)"),
    ("latent_dim huge", ["info", "{huge_latent}"], "latent_dim='1000000000' is not a whole number from 1 to 4096"),
    ("channels 7", ["info", "{channels_7}"], "channels='7' is not a whole number from 1 to 3"),
    ("empty file", ["info", "{empty}"], "not a valid ONNX model"),
    ("garbage file", ["generate", "-m", "{garbage}", "-o", "x.png"], "not a valid ONNX model"),
    # latents files
    ("latents 0 rows", ["generate", "-m", "{good}", "--latents", "{zero_rows}", "-o", "x.png"], "n >= 1"),
    ("latents 0-d", ["generate", "-m", "{good}", "--latents", "{zero_d}", "-o", "x.png"], "expected [n, 8]"),
    ("latents npz", ["generate", "-m", "{good}", "--latents", "{npz}", "-o", "x.png"], "an .npz archive"),
    ("latents huge header", ["generate", "-m", "{good}", "--latents", "{huge_header}", "-o", "x.png"],
     "not a readable .npy file"),
    ("latents with -n", ["generate", "-m", "{good}", "--latents", "{z}", "-n", 3, "-o", "x.png"],
     "-n, --seed and --truncation do not apply"),
    ("latents with --seed", ["generate", "-m", "{good}", "--latents", "{z}", "--seed", 3, "-o", "x.png"],
     "-n, --seed and --truncation do not apply"),
    # features
    ("features empty", ["evaluate", "{good}", "--data", "synthetic:400", "-n", 200, "--features", "{empty}"],
     "an empty file"),
    ("features garbage", ["evaluate", "{good}", "--data", "synthetic:400", "-n", 200, "--features", "{garbage}"],
     "not a valid ONNX feature extractor"),
    ("features a generator", ["evaluate", "{good}", "--data", "synthetic:400", "-n", 200, "--features", "{good}"],
     "a generator, not a feature extractor"),
    ("features empty .pth", ["evaluate", "{good}", "--data", "synthetic:400", "-n", 200, "--features", "{empty_pth}"],
     "not a readable PyTorch weights file (an empty file)"),
    # seeds
    ("seed 2**70", ["generate", "-m", "{good}", "--seed", 2**70, "-o", "x.png"], "from 0 to 2**64 - 1"),
    ("seed 10**400", ["generate", "-m", "{good}", "--seed", 10**400, "-o", "x.png"], "from 0 to 2**64 - 1"),
    ("seeds 2**70", ["interpolate", "-m", "{good}", "--seeds", f"1,{2**70}", "-o", "walk"], "2**64 - 1"),
    ("truncation 0", ["generate", "-m", "{good}", "--truncation", 0, "-o", "x.png"], "0 < psi <= 1"),
    ("truncation 2", ["generate", "-m", "{good}", "--truncation", 2, "-o", "x.png"], "0 < psi <= 1"),
    ("truncation nan", ["generate", "-m", "{good}", "--truncation", "nan", "-o", "x.png"], "0 < psi <= 1"),
    ("truncation 0 in float32", ["generate", "-m", "{good}", "--truncation", "1e-50", "-o", "x.png"], "as float32 above 0"),
    ("truncation 0 in float32: interpolate", ["interpolate", "-m", "{good}", "--truncation", "1e-50", "-o", "walk"],
     "as float32 above 0"),
    # outputs
    ("folder not empty", ["generate", "-m", "{good}", "-n", 3, "-o", "full/"], "is not empty; pass --overwrite"),
    ("export to png", ["export", "{ckpt}", "-o", "x.png"],
     "give a path ending in .onnx"),
    ("export opset 99", ["export", "{ckpt}", "-o", "x.onnx",
                         "--opset", 99], "--opset must be from 17"),
    ("edit unknown direction", ["edit", "-m", "{good}", "--seed", 1, "--direction", "sefa-1", "-o", "e.png"],
     "carries no latent directions"),
    ("edit bad strengths", ["edit", "-m", "{good}", "--seed", 1, "--direction", "1", "--strengths", "1,nan",
                            "-o", "e.png"], "--strengths takes"),
    ("edit not png", ["edit", "-m", "{good}", "--seed", 1, "--direction", "1", "-o", "e.gif"], "ending in .png"),
    ("edit 400 rows", ["edit", "-m", "mnist", "--seed", 1, *["--direction", "sefa-1"] * 400, "--strengths",
                       ",".join(["1"] * 32), "-o", "e.png"], "400 directions to edit along; at most 64"),
    ("directions on garbage", ["directions", "{garbage}"], "not a valid ONNX model"),
]


@pytest.mark.parametrize("case, argv, phrase", CASES, ids=[c[0] for c in CASES])
def test_refused_with_one_line_and_nothing_written(files, tmp_path, case, argv, phrase):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "000000.png").write_bytes(b"an earlier run")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(**files) if isinstance(a, str) else a for a in argv]
    code, err, after = run(args, tmp_path)
    assert code != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in err
    assert after == before  # nothing written, nothing left behind
    assert (tmp_path / "full" / "000000.png").read_bytes() == b"an earlier run"


def test_directions_without_their_optional_facts_still_show(files, tmp_path):
    bare = model_with(tmp_path, "bare", {"directions": json.dumps(
        {"version": 1, "directions": [{"name": "a", "method": "sefa", "vector": [1.0] + [0.0] * 7},
                                      {"name": "b", "method": "labelled", "vector": [0.0, 1.0] + [0.0] * 6}]})})
    code, err, _ = run(["info", bare], tmp_path)
    assert code == 0, err
    r = CliRunner().invoke(main, ["info", str(bare), "--json"])
    assert r.exit_code == 0 and [d["name"] for d in json.loads(r.output)["directions"]] == ["a", "b"]


def test_garbage_files_are_left_as_they_were(files):
    digest = files["garbage"].read_bytes()
    code, _, _ = run(["directions", files["garbage"]], files["garbage"].parent)
    assert code != 0 and files["garbage"].read_bytes() == digest


# ---- legitimate inputs that were once refused or mishandled ---------------------------------
def test_info_escapes_control_characters_and_prints_valid_json(files, tmp_path):
    code, _, _ = run(["info", files["escape_codes"]], tmp_path)
    r = CliRunner().invoke(main, ["info", str(files["escape_codes"])])
    assert code == 0 and "\x1b" not in r.output and "\r" not in r.output and "evil\\x1b[2J\\x0dname\\x0aline" in r.output
    r = CliRunner().invoke(main, ["info", str(files["escape_codes"]), "--json"])
    assert json.loads(r.output)["metadata"]["dataset"] == "evil\x1b[2J\rname\nline"  # escaped by JSON itself


def test_a_long_legal_file_name_is_written(files, tmp_path):
    name = "g" * 246 + ".png"  # 250 characters: legal, though its temp name would not be
    code, err, after = run(["generate", "-m", files["good"], "-n", 4, "--seed", 0, "-o", name], tmp_path)
    assert code == 0, err
    assert after == [name]


def test_a_read_only_output_is_refused_and_kept(files, tmp_path):
    out = tmp_path / "x.png"
    out.write_bytes(b"keep me")
    out.chmod(0o444)
    code, err, _ = run(["generate", "-m", files["good"], "-n", 4, "-o", out], tmp_path)
    assert code == 1 and "is read-only" in err and out.read_bytes() == b"keep me"


def test_overwrite_replaces_a_folder_whole(files, tmp_path):
    folder = tmp_path / "imgs"
    assert run(["generate", "-m", files["good"], "-n", 5, "--seed", 1, "-o", f"{folder}/"], tmp_path)[0] == 0
    code, err, _ = run(["generate", "-m", files["good"], "-n", 2, "--seed", 2, "-o", f"{folder}/", "--overwrite"],
                       tmp_path)
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png"]  # no stale 000002-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_failed_interpolation_leaves_both_files_as_they_were(files, tmp_path, monkeypatch):
    from dcgan_deploy import images
    for suffix in (".png", ".gif"):
        (tmp_path / f"walk{suffix}").write_bytes(b"old " + suffix.encode())
    monkeypatch.setattr(images, "encode_gif", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    code, err, _ = run(["interpolate", "-m", files["good"], "-o", "walk"], tmp_path)
    assert code == 1 and "disk full" in err
    assert (tmp_path / "walk.png").read_bytes() == b"old .png" and (tmp_path / "walk.gif").read_bytes() == b"old .gif"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.gif", "walk.png"]


def test_the_largest_seed_is_accepted(files, tmp_path):
    assert run(["generate", "-m", files["good"], "-n", 2, "--seed", 2**64 - 1, "-o", "x.png"], tmp_path)[0] == 0


def test_the_umask_is_never_changed_while_writing(files, tmp_path, monkeypatch):
    """The demo writes from two handler threads at once: setting the umask to read it would race."""
    monkeypatch.setattr(os, "umask", lambda *a: (_ for _ in ()).throw(AssertionError("umask changed")))
    code, err, _ = run(["generate", "-m", files["good"], "-n", 2, "-o", "x.png"], tmp_path)
    assert code == 0, err
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == 0o666 & ~__import__("dcgan_deploy.files").files.UMASK


def test_sigterm_cleans_up_like_ctrl_c(files, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "dcgan_deploy", "generate", "-m", str(files["good"]), "-n",
                             str(10**8), "--batch-size", "4096", "-o", "big.npy"], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".big.npy.*.part")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".big.npy.*.part")), "the write never started"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []  # no .part file, no big.npy


# ---- checkpoints and recipes (torch) ------------------------------------------------------
def ckpt_cases(tmp: Path) -> list:
    from safetensors.torch import save_file

    from dcgan_deploy.checkpoint import NET_KEY
    net = {"arch": "dcgan64", "latent_dim": 100, "latent_prior": "normal", "channels": 3, "image_size": 64,
           "g_width": 8, "d_width": 8}
    tiny = {"w": torch.zeros(2)}
    out = []

    def st(name, meta):
        save_file(tiny, str(tmp / f"{name}.safetensors"), metadata={NET_KEY: json.dumps(meta)} if meta is not None
                  else None)
        return tmp / f"{name}.safetensors"

    def pt(name, obj):
        torch.save(obj, tmp / f"{name}.pt")
        return tmp / f"{name}.pt"
    state = {"format": 1, "step": 3, "train_config": {"data": "x"}, "net_config": net}
    out += [
        (st("latent_1e9", {**net, "latent_dim": 10**9}), "latent_dim must be a whole number from 1 to 4096"),
        (st("width_1e6", {**net, "g_width": 10**6}), "g_width must be a whole number from 2 to 1024"),
        (st("width_big", {**net, "g_width": 512}), "M parameters (limit 100 M)"),
        (st("arch_unknown", {**net, "arch": "stylegan"}), "unknown architecture 'stylegan'"),
        (st("size_string", {**net, "latent_dim": "100"}), "latent_dim must be a whole number"),
        (st("size_float", {**net, "g_width": 8.0}), "g_width must be a whole number"),
        (st("incomplete", {"arch": "dcgan64"}), "the architecture config lacks"),
        (st("a_list", [1, 2]), "must be a dict, got list"),
        (st("no_weights", net), "does not match dcgan64: key main.0.weight"),
        (pt("no_generator", state), "holds no generator weights"),
        (pt("train_config_list", {**state, "train_config": [1], "G": {"w": torch.zeros(1)}}),
         "needs a 'train_config' dict"),
        (pt("net_config_list", {**state, "net_config": ["dcgan64"]}), "must be a dict, got list"),
        (pt("step_string", {**state, "step": "3", "G": {"w": torch.zeros(1)}}), "an integer 'step'"),
        (pt("weights_not_tensors", {**state, "G": {"main.0.weight": [1.0]}}), "is a list, not a tensor"),
    ]
    bad_json = tmp / "bad_json.safetensors"
    save_file(tiny, str(bad_json), metadata={NET_KEY: "{nope"})
    out.append((bad_json, "is not valid JSON"))
    return out


def test_hostile_checkpoints_are_refused_before_anything_is_built(tmp_path):
    for path, phrase in ckpt_cases(tmp_path):
        code, err, after = run(["export", path, "-o", tmp_path / "out.onnx"], tmp_path)
        assert code == 1 and len(err.strip().splitlines()) == 1 and phrase in err, (path.name, err)
        assert "Traceback" not in err and "out.onnx" not in after


@pytest.mark.slow
def test_a_huge_checkpoint_is_refused_without_allocating_it(tmp_path):
    """The sizes a checkpoint declares are checked before a tensor is built: under a 6 GB address-space limit
    (far below the 784 GB a hostile [net] config asks for), the refusal is still the one clear line."""
    cases = [(p, phrase) for p, phrase in ckpt_cases(tmp_path) if p.stem in ("latent_1e9", "width_1e6", "width_big")]
    assert len(cases) == 3
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, resource.RLIM_INFINITY))\n"
            "from dcgan_deploy.cli import main\n"
            "main(sys.argv[1:], prog_name='dcgan-deploy')")
    for path, phrase in cases:
        r = subprocess.run([sys.executable, "-c", code, "export", str(path), "-o", str(tmp_path / "out.onnx")],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 1 and phrase in r.stderr and "Traceback" not in r.stderr, (path.name, r.stderr[-500:])


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def toml_recipe(tmp: Path, settings: dict) -> Path:
    """A recipe file with any values, of any type (``net`` as an inline table, or whatever it is)."""
    path = tmp / "recipe.toml"
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    return path


RECIPES = [
    ({"lr": "fast"}, "lr must be a number"),
    ({"ema": "0.9"}, "ema must be a number"),
    ({"data": 5}, "data must be a string"),
    ({"net": 3}, "net must be a table"),
    ({"steps": -5}, "steps must be a positive integer"),
    ({"steps": 10**12}, "at most 1000000000"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": 10**7}, "at most 65536"),
    ({"lr": float("inf")}, "lr must be a positive finite number"),
    ({"spectral_norm": "yes"}, "spectral_norm must be true or false"),
    ({"loss": "wasserstein"}, "loss must be one of"),
    ({"optim": {"lr": "fast"}}, "[optim] lr must be a number, got 'fast'"),
    ({"optim": {"lrr": 1e-3}}, "unknown setting(s) in [optim]: lrr"),
    ({"run": "fast"}, "run must be a table ([run])"),
    ({"discriminator": {"r1": -1.0}}, "r1 must be a non-negative finite number, got -1.0"),
    ({"lecam": 0.3}, "lecam is no longer in the trainer (it measured worse"),
    ({"top_k": 0.5}, "top_k is no longer in the trainer"),
    ({"augment": "color,scale"}, "unknown policy 'scale'"),
    ({"augment": "color,rotate"}, "unknown policy 'rotate'"),
    ({"ada_target": 0.6}, "ada_target adapts the augmentation's strength: give augment policies too"),
    ({"ada_target": 1.5, "augment": "color"}, "ada_target must be in [0, 1) (0 = off), got 1.5"),
    ({"ada_images": 0}, "ada_images must be a positive integer"),
    ({"threads": 10**6}, "threads must be at most"),
    ({"net": {"channels": 7}}, "channels must be 1 (grayscale) or 3 (RGB)"),
    ({"net": {"latent_dim": 0}}, "latent_dim must be a whole number from 1 to 4096"),
    ({"net": {"g_width": 1.5}}, "[net] g_width must be a whole number"),
    ({"net": {"g_width": 10**5}}, "g_width must be a whole number from 2 to 1024"),
    ({"data": "synthetic:1000000000"}, "synthetic:N takes a whole number N from 1 to 100000"),
    ({"data": "synthetic:abc"}, "synthetic:N takes a whole number"),
]


@pytest.mark.slow
@pytest.mark.parametrize("settings, phrase", RECIPES, ids=[next(iter(s)) + ":" + str(s[next(iter(s))])[:20]
                                                            for s, _ in RECIPES])
def test_bad_recipes_are_refused_at_load(tmp_path, settings, phrase):
    r = toml_recipe(tmp_path, {"arch": "mnist-dcgan", "data": "synthetic:64", "steps": 4, "batch_size": 8,
                               "net": {"g_width": 8, "d_width": 8}, **settings})
    code, err, after = run(["train", r, "--out", tmp_path / "run"], tmp_path)
    assert code == 1 and len(err.strip().splitlines()) == 1 and phrase in err, err
    assert "run" not in after


def test_a_torn_log_line_does_not_block_resume(tmp_path):
    from test_train import recipe
    r = recipe(tmp_path, steps=2, checkpoint_every=2)
    assert run(["train", r, "--out", tmp_path / "run"], tmp_path)[0] == 0
    log = tmp_path / "run" / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "d_loss": 0.5, "g_lo')  # a disk-full cut mid-line
    code, err, _ = run(["train", "--resume", tmp_path / "run", "--steps", 3], tmp_path)
    assert code == 0, err
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r.get("step") for r in rows if "d_loss" in r and "done" not in r] == [1, 2, 3]
    log.write_text('{"step": 1}\n[1, 2]\n{"step": 2}\n')  # not a torn end: the file is named, nothing trained
    code, err, _ = run(["train", "--resume", tmp_path / "run", "--steps", 4], tmp_path)
    assert code == 1 and "log.jsonl: line 2 is not a log record" in err


def test_resume_below_the_current_step_is_refused(tmp_path):
    from test_train import recipe
    r = recipe(tmp_path, steps=2, checkpoint_every=2)
    assert run(["train", r, "--out", tmp_path / "run"], tmp_path)[0] == 0
    log = (tmp_path / "run" / "log.jsonl").read_text()
    for steps in (1, 2):
        code, err, _ = run(["train", "--resume", tmp_path / "run", "--steps", steps], tmp_path)
        assert code == 1 and "is at step 2 already" in err
    assert (tmp_path / "run" / "log.jsonl").read_text() == log


def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_last_one(tmp_path, monkeypatch):
    import errno

    from dcgan_deploy import checkpoint
    from dcgan_deploy.train import TrainConfig, Trainer
    cfg = TrainConfig.of(arch="mnist-dcgan", data="synthetic:16", steps=2, batch_size=4, checkpoint_every=1,
                      sample_every=100, net={"g_width": 8, "d_width": 8})
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.cfg.steps = 1
    trainer.train()
    good = (tmp_path / "train_state.pt").read_bytes()

    real_write = checkpoint.write_bytes

    def full(dest, data):  # the disk fills while the checkpoint is written (the log's rewrite at the start gets by)
        if Path(dest).name == "log.jsonl":
            return real_write(dest, data)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint, "write_bytes", full)
    trainer.cfg.steps = 2
    with pytest.raises(checkpoint.CheckpointError, match="train_state.pt: disk full while writing"):
        trainer.train()
    assert (tmp_path / "train_state.pt").read_bytes() == good


def test_a_killed_saves_leftovers_are_swept_on_resume(tmp_path):
    from test_train import recipe
    r = recipe(tmp_path, steps=2, checkpoint_every=2)
    assert run(["train", r, "--out", tmp_path / "run"], tmp_path)[0] == 0
    for name in (".tmpA1b2C3", ".generator.safetensors.x1y2.part", ".train_state.pt.abcd.part"):
        (tmp_path / "run" / name).write_bytes(b"half a save")
    assert run(["train", "--resume", tmp_path / "run", "--steps", 3], tmp_path)[0] == 0
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == [".lock"]  # the run's lock


@pytest.mark.slow
def test_verify_picks_the_gate_from_the_graph_not_the_metadata(tmp_path):
    """A tampered fp32 file fails; claiming precision=int8 in its own metadata must not let it pass."""
    from dcgan_deploy.bundled import bundled_models
    from dcgan_deploy.modelfile import read, write_metadata
    tampered = tmp_path / "tampered.onnx"
    m = onnx.load(str(bundled_models()["mnist"]))
    init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(init).copy()
    w.flat[::97] += 0.003  # small enough for PSNR > 30 dB, far beyond the fp32 gate's 1e-4
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, str(tampered))
    ckpt = recorded_weights("mnist", tmp_path)
    assert run(["verify", tampered, ckpt], tmp_path)[0] == 4
    write_metadata(tampered, {**read(tampered).metadata, "precision": "int8"})
    r = CliRunner().invoke(main, ["verify", str(tampered), str(ckpt)])
    assert r.exit_code == 4 and "the float32 gate was applied" in r.output
    assert CliRunner().invoke(main, ["verify", str(tampered), str(ckpt), "--precision", "int8"]).exit_code == 0
