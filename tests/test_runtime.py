import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest

from conftest import make_model
from dcgan_deploy import Generator, ModelError, UnverifiedModelWarning
from dcgan_deploy.images import to_uint8


def test_load_exposes_the_contract(tiny_model):
    gen = Generator.load(tiny_model, device="cpu", threads=1)
    assert gen.path == tiny_model
    assert gen.provider == "CPUExecutionProvider" and gen.device == "cpu"
    assert gen.latent_dim == 8 and gen.image_shape == (6, 6, 1)
    assert gen.metadata["architecture"] == "tiny-gemm"
    assert gen.parity["passed"] is True


def test_generate_matches_the_graph_by_hand(tiny_model):
    """The runtime computes tanh(z @ W + b) on seeded latents: check against numpy."""
    import onnx
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tiny_model)).graph.initializer}
    gen = Generator.load(tiny_model, device="cpu")
    z = np.random.default_rng(11).standard_normal((5, 8), dtype=np.float32)
    np.testing.assert_array_equal(gen.latents(5, 11), z)
    want = np.tanh(z @ inits["W"] + inits["B"]).reshape(5, 1, 6, 6)
    np.testing.assert_allclose(gen.run(z), want, atol=1e-5)
    images = gen.generate(5, seed=11)
    assert images.dtype == np.uint8 and images.shape == (5, 6, 6, 1)
    assert np.abs(images.astype(int) - to_uint8(want).astype(int)).max() <= 1


def test_seed_reproducibility(rgb_model):
    gen = Generator.load(rgb_model, device="cpu")
    full = gen.generate(37, seed=5, batch_size=8)
    assert full.shape == (37, 4, 5, 3)
    np.testing.assert_array_equal(gen.generate(37, seed=5), full)            # same bytes across calls
    np.testing.assert_array_equal(gen.generate(10, seed=5, batch_size=3), full[:10])  # first k of n
    np.testing.assert_array_equal(gen.generate(37, seed=5, batch_size=37), full)      # one batch == chunks
    chunks = list(gen.iter_generate(37, seed=5, batch_size=16))
    assert [len(c) for c in chunks] == [16, 16, 5]
    assert not np.array_equal(gen.generate(37, seed=6), full)
    # the uniform prior is honoured
    z = gen.latents(100, 0)
    assert z.min() >= -1 and z.max() <= 1


def test_random_seed_when_none(tiny_model):
    gen = Generator.load(tiny_model, device="cpu")
    assert not np.array_equal(gen.generate(4), gen.generate(4))


def test_threads_give_the_same_images_as_sequential_calls(tiny_model):
    gen = Generator.load(tiny_model, device="cpu")
    seeds = list(range(16))
    sequential = {s: gen.generate(33, seed=s, batch_size=7) for s in seeds}
    results, errors = {}, []

    def work(s):
        try:
            for _ in range(3):
                results.setdefault(s, []).append(gen.generate(33, seed=s, batch_size=7))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in seeds:
        for got in results[s]:
            np.testing.assert_array_equal(got, sequential[s])


@pytest.mark.parametrize("z, match", [
    (np.zeros((2, 8), np.float64), "float32"),
    (np.zeros((2, 7), np.float32), "shape"),
    (np.zeros((8,), np.float32), "shape"),
    (np.zeros((0, 8), np.float32), "shape"),
    (np.array([[np.nan] * 8], np.float32), "NaN"),
    (np.array([[np.inf] * 8], np.float32), "NaN"),
    ([[0.0] * 8], "numpy array"),
])
def test_bad_latents_are_rejected(tiny_model, z, match):
    gen = Generator.load(tiny_model, device="cpu")
    with pytest.raises(ValueError, match=match):
        gen.run(z)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "at least 1"), ({"n": -3}, "at least 1"), ({"n": 2.5}, "integer"),
    ({"n": 2, "seed": -1}, "seed"), ({"n": 2, "batch_size": 0}, "batch_size"),
])
def test_bad_generate_arguments(tiny_model, kwargs, match):
    gen = Generator.load(tiny_model, device="cpu")
    with pytest.raises(ValueError, match=match):
        gen.generate(**kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such model file") as e:
        Generator.load(tmp_path / "nope.onnx")
    assert "nope.onnx" in str(e.value)


def test_not_onnx(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX model") as e:
        Generator.load(bad)
    assert "junk.onnx" in str(e.value) and "\n" not in str(e.value)


def test_onnx_but_not_ours(tmp_path):
    path = make_model(tmp_path / "other.onnx", drop=("dcgan_deploy.format",))
    with pytest.raises(ModelError, match="not a dcgan-deploy generator"):
        Generator.load(path)


def test_unknown_format(tmp_path):
    path = make_model(tmp_path / "future.onnx", metadata={"dcgan_deploy.format": "99"})
    with pytest.raises(ModelError, match="unknown model format '99'"):
        Generator.load(path)


@pytest.mark.parametrize("kwargs, match", [
    ({"drop": ("latent_dim",)}, "lacks latent_dim"),
    ({"metadata": {"channels": "x"}}, "channels"),
    ({"metadata": {"latent_prior": "cauchy"}}, "latent_prior"),
    ({"metadata": {"latent_dim": "9"}}, "'z' has shape"),
    ({"metadata": {"height": "7"}}, "'image' has shape"),
    ({"z_name": "input"}, "input 'z' and one output 'image'"),
    ({"fixed_batch": True}, "fixed batch"),
])
def test_graph_and_metadata_must_agree(tmp_path, kwargs, match):
    with pytest.raises(ModelError, match=match):
        Generator.load(make_model(tmp_path / "m.onnx", **kwargs))


def test_bad_device_and_threads(tiny_model):
    with pytest.raises(ValueError, match="device"):
        Generator.load(tiny_model, device="tpu")
    with pytest.raises(ValueError, match="threads"):
        Generator.load(tiny_model, threads=0)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this build has CUDA")
def test_cuda_request_fails_clearly_without_cuda(tiny_model):
    with pytest.raises(ModelError, match="no CUDA provider"):
        Generator.load(tiny_model, device="cuda")
    assert Generator.load(tiny_model, device="auto").provider == "CPUExecutionProvider"


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_matches_cpu(rgb_model):
    cuda = Generator.load(rgb_model, device="cuda")
    assert cuda.provider == "CUDAExecutionProvider"
    cpu = Generator.load(rgb_model, device="cpu")
    diff = np.abs(cuda.generate(64, seed=1).astype(int) - cpu.generate(64, seed=1).astype(int))
    assert diff.max() <= 1


def test_unverified_model_warns(tmp_path):
    path = make_model(tmp_path / "fp16.onnx", metadata={"parity": '{"passed": true, "verified": false, '
                                                                    '"reason": "no CUDA to check fp16"}'})
    with pytest.warns(UnverifiedModelWarning, match="no CUDA to check fp16"):
        Generator.load(path)


def test_importing_the_runtime_stays_light():
    code = ("import sys, dcgan_deploy, dcgan_deploy.runtime, dcgan_deploy.latent, dcgan_deploy.images;"
            "print(','.join(m for m in ('torch', 'onnx', 'gradio', 'click', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


@pytest.mark.slow
def test_the_readmes_python_example_runs():
    import re
    from conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Embedding the runtime\s+```python\n(.*?)```", readme, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 -- the project's own README
    assert scope["images"].shape == (16, 28, 28, 1) and scope["walk"].shape == (9, 28, 28, 1)
    assert scope["x"].shape == (4, 1, 28, 28) and scope["edited"].shape == (4, 28, 28, 1)
    assert not np.array_equal(scope["edited"], scope["gen"].generate(4, seed=7))
    assert np.array_equal(scope["faithful"], scope["gen"].generate(16, seed=42, truncation=0.7))


# ---- the engine seam (session.Session) ---------------------------------------------------------
class NumpyGemmSession:
    """A second engine in a few lines: numpy computing the tiny Gemm -> Tanh -> Reshape graph that
    ``make_model`` writes, from the file's own weights. What ``Generator`` needs of any engine."""

    engine, provider, device = "numpy-gemm", "numpy", "cpu"

    def __init__(self, path, dtype="float32"):
        from dcgan_deploy import modelfile
        init = modelfile.read(path).graph.initializers
        self.w, self.b, self.shape = init["W"].array(), init["B"].array(), init["shape"].array()
        self.dtype = dtype

    def inputs(self):
        from dcgan_deploy.session import Port
        return [Port("z", self.dtype, (None, self.w.shape[0]))]

    def outputs(self):
        from dcgan_deploy.session import Port
        return [Port("image", "float32", (None, *map(int, self.shape[1:])))]

    def run(self, z, label=None):
        return np.tanh(z @ self.w + self.b).astype(np.float32).reshape(self.shape)

    def facts(self):
        return {"numpy": np.__version__}


def test_another_engine_is_one_class_behind_the_session_interface(tmp_path, monkeypatch):
    from dcgan_deploy import session
    path = make_model(tmp_path / "m.onnx", latent_dim=8, channels=3, height=4, width=5)
    monkeypatch.setitem(session.ENGINES, "numpy-gemm", lambda p, device, threads: NumpyGemmSession(p))
    ours, theirs = Generator.load(path, engine="numpy-gemm"), Generator.load(path, device="cpu")
    assert ours.provider == "numpy" and ours.info()["engine"] == "numpy-gemm" and theirs.info()["engine"] == "onnxruntime"
    np.testing.assert_allclose(ours.run(ours.latents(6, 3)), theirs.run(theirs.latents(6, 3)), atol=1e-5)
    assert ours.generate(4, seed=1).shape == (4, 4, 5, 3)
    with pytest.raises(ValueError, match="latents must be float32"):  # the runtime's checks, whatever the engine
        ours.run(np.zeros((1, 8)))
    # the file's ports are checked through the interface: an engine that reports a float64 input is refused
    monkeypatch.setitem(session.ENGINES, "numpy-gemm", lambda p, device, threads: NumpyGemmSession(p, "float64"))
    with pytest.raises(ModelError, match="'z' must be float32, is float64"):
        Generator.load(path, engine="numpy-gemm")
    with pytest.raises(ValueError, match="unknown engine 'coreml'; available: onnxruntime"):
        Generator.load(path, engine="coreml")


def test_the_cuda_libraries_a_provider_needs_are_read_from_its_elf_file_and_named_when_missing():
    """``info``'s cuda line, and the one line a failed CUDA start gives: the libraries a shared object needs
    are read from its dynamic segment (as the loader reads them), and the first that cannot be loaded is named."""
    from pathlib import Path

    from dcgan_deploy import session
    state = Path(ort.__file__).parent / "capi"
    needed = session.elf_needed(next(state.glob("onnxruntime_pybind11_state*.so")))
    assert "libc.so.6" in needed and all(n.startswith(("lib", "ld-")) for n in needed)
    assert session.first_unloadable(needed) is None  # this process runs it: every one loads
    assert session.first_unloadable(["libc.so.6", "libcudnn_not_here.so.9"]) == "libcudnn_not_here.so.9"
    assert session.elf_needed(Path(__file__)) == []  # not an ELF file
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "no CUDA provider" in session.cuda_status() and session.missing_cuda_library() is None
