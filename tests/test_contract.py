"""One input contract for both runtimes: the test vectors of tests/data/input_contract.json (seeds, counts,
truncation, strengths, directions), each run through the Python runtime's rules and, in Node, through the
JavaScript runtime's; both must give the verdict the file states. And the JavaScript runtime refuses what
the Python one refuses in a model file: random ops in the graph, bad directions in the metadata."""
import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import ROOT, make_model
from dcgan_deploy import Generator, ModelError
from dcgan_deploy.edits import check_strength
from dcgan_deploy.latent import check_count, check_seed, check_truncation
from dcgan_deploy.modelfile import check_direction_name, check_direction_vector, check_directions, write_metadata

CASES = json.loads((ROOT / "tests" / "data" / "input_contract.json").read_text())["cases"]
NODE = shutil.which("node")
MODULE = (ROOT / "dcgan_deploy" / "js" / "dcgan.mjs").as_uri()
needs_node = pytest.mark.skipif(NODE is None, reason="needs Node.js")


def value(v):
    return int(v["int"]) if isinstance(v, dict) and set(v) == {"int"} else v


def directions_entry(count: int, dim: int) -> dict:
    vector = [1.0] + [0.0] * (dim - 1)
    return {"version": 1, "directions": [{"name": f"d{i}", "method": "sefa", "vector": vector} for i in range(count)]}


PYTHON = {
    "seed": lambda c: check_seed(value(c["input"])),
    "count": lambda c: check_count(value(c["input"])),
    "truncation": lambda c: check_truncation(value(c["input"])),
    "strength": lambda c: check_strength(value(c["input"])),
    "direction_name": lambda c: check_direction_name(c["input"]),
    "direction_vector": lambda c: check_direction_vector(c["input"], c["latent_dim"]),
    "directions_count": lambda c: check_directions(
        {"latent_dim": str(c["latent_dim"]), "directions": json.dumps(directions_entry(c["input"], c["latent_dim"]))}, "x"),
}


def python_verdict(case) -> bool:
    try:
        PYTHON[case["rule"]](case)
        return True
    except (ValueError, ModelError):
        return False


def test_every_rule_has_cases_both_ways():
    assert {c["rule"] for c in CASES} == set(PYTHON)
    for rule in PYTHON:
        assert {c["valid"] for c in CASES if c["rule"] == rule} == {True, False}, rule


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['rule']}:{json.dumps(c['input'])[:40]}")
def test_the_python_runtime_gives_the_stated_verdict(case):
    assert python_verdict(case) == case["valid"]


JS = """
import * as d from "%s";
const cases = JSON.parse(process.argv[1]);
const value = (v) => (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).join() === "int") ? BigInt(v.int) : v;
const entry = (count, dim) => ({ version: 1, directions: Array.from({ length: count }, (_, i) =>
  ({ name: `d${i}`, method: "sefa", vector: [1, ...new Array(dim - 1).fill(0)] })) });
const rules = {
  seed: (c) => d.checkSeed(value(c.input)),
  count: (c) => d.checkCount(value(c.input)),
  truncation: (c) => d.checkTruncation(value(c.input)),
  strength: (c) => d.checkStrength(value(c.input)),
  direction_name: (c) => d.checkDirectionName(c.input),
  direction_vector: (c) => d.checkDirectionVector(c.input, c.latent_dim),
  directions_count: (c) => d.checkDirections(entry(c.input, c.latent_dim), c.latent_dim),
};
const out = cases.map((c) => {
  try { rules[c.rule](c); return { valid: true }; }
  catch (e) { return { valid: false, error: `${e.name}: ${e.message}` }; }
});
process.stdout.write(JSON.stringify(out));
"""


def run_node(script: str, *args) -> str:
    r = subprocess.run([NODE, "--input-type=module", "-e", script, *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@needs_node
def test_the_javascript_runtime_gives_the_same_verdicts():
    verdicts = json.loads(run_node(JS % MODULE, json.dumps(CASES)))
    wrong = [(c["rule"], c["input"], v) for c, v in zip(CASES, verdicts) if v["valid"] != c["valid"]]
    assert not wrong
    # a refusal is a RangeError with a message that names the rule
    assert all(v["error"].startswith("RangeError: ") for c, v in zip(CASES, verdicts) if not c["valid"])


LOAD = """
import * as ort from "onnxruntime-web";
import { loadGenerator } from "%s";
ort.env.wasm.numThreads = 1;
const out = {};
for (const path of process.argv.slice(1)) {
  try { const gen = await loadGenerator(path, { ort }); out[path] = { ok: true, directions: gen.directions.length }; }
  catch (e) { out[path] = { ok: false, error: e.message }; }
}
process.stdout.write(JSON.stringify(out));
"""


def with_random_op(path, in_function: bool = False):
    """A contract-following file whose image gets noise from RandomUniformLike (in the graph, or inside a
    local function the graph calls)."""
    make_model(path)
    m = onnx.load(str(path))
    m.graph.node[-1].output[0] = "clean"
    if in_function:
        fn = helper.make_function("local", "Noisy", ["x"], ["y"],
                                  [helper.make_node("RandomUniformLike", ["x"], ["n"]), helper.make_node("Add", ["x", "n"], ["y"])],
                                  [helper.make_opsetid("", 18)])
        m.functions.append(fn)
        m.opset_import.append(helper.make_opsetid("local", 1))
        m.graph.node.append(helper.make_node("Noisy", ["clean"], ["image"], domain="local"))
    else:
        m.graph.node.extend([helper.make_node("RandomUniformLike", ["clean"], ["noise"]),
                             helper.make_node("Add", ["clean", "noise"], ["image"])])
    onnx.save(m, str(path))
    return path


@needs_node
def test_the_javascript_runtime_refuses_what_python_refuses_in_a_model_file(tmp_path):
    good = make_model(tmp_path / "good.onnx")
    direct, hidden = with_random_op(tmp_path / "random.onnx"), with_random_op(tmp_path / "hidden.onnx", in_function=True)
    bad_directions = {}
    for name, entry in {
        "norm2": {"version": 1, "directions": [{"name": "a", "method": "sefa", "vector": [2.0] + [0.0] * 7}]},
        "dotdot": {"version": 1, "directions": [{"name": "../x", "method": "sefa", "vector": [1.0] + [0.0] * 7}]},
        "many": directions_entry(65, 8),
    }.items():
        path = make_model(tmp_path / f"{name}.onnx")
        write_metadata(path, {**Generator.load(path).metadata, "directions": json.dumps(entry)})
        bad_directions[name] = path
    for path in (direct, hidden, *bad_directions.values()):
        with pytest.raises(ModelError):
            Generator.load(path)
    out = json.loads(run_node(LOAD % MODULE, *map(str, (good, direct, hidden, *bad_directions.values()))))
    assert out[str(good)]["ok"]
    for path in (direct, hidden):
        assert not out[str(path)]["ok"] and "random or training-only ops (RandomUniformLike)" in out[str(path)]["error"]
    for name, path in bad_directions.items():
        assert not out[str(path)]["ok"] and "metadata 'directions'" in out[str(path)]["error"], name


@needs_node
def test_edits_in_javascript_keep_the_strength_bound():
    script = """
import { loadGenerator } from "%s";
import * as ort from "onnxruntime-web";
ort.env.wasm.numThreads = 1;
const gen = await loadGenerator(process.argv[1], { ort });
const z = gen.latents(1, 0), name = gen.directions[0].name, out = {};
for (const s of [3, 100, 1e30, -101]) {
  try { gen.edit(z, [[name, s]]); out[s] = "ok"; } catch (e) { out[s] = e.message; }
}
process.stdout.write(JSON.stringify(out));
"""
    out = json.loads(run_node(script % MODULE, str(ROOT / "exports" / "mnist.onnx")))
    assert out["3"] == "ok" and out["100"] == "ok"
    assert "within +-100" in out["1e+30"] and "within +-100" in out["-101"]


def test_a_truncation_that_is_zero_in_float32_is_refused_everywhere_it_is_used():
    gen = Generator.load("mnist")
    with pytest.raises(ValueError, match="as float32 above 0"):
        gen.generate(2, seed=0, truncation=1e-50)
    assert np.all(gen.latents(2, 0, truncation=1e-30) != 0)
