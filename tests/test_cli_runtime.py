import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dcgan_deploy import Generator
from dcgan_deploy.cli import main
from dcgan_deploy.images import grid


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_generate_grid_png(tiny_model, tmp_path):
    out = tmp_path / "grid.png"
    r = invoke("generate", "-m", tiny_model, "-n", 10, "--seed", 3, "-o", out)
    assert r.exit_code == 0, r.output
    assert "seed 3" in r.output
    expected = grid(Generator.load(tiny_model).generate(10, seed=3))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected[..., 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "tiny.onnx"]  # no temp file left


def test_generate_npy_streams_in_chunks(rgb_model, tmp_path):
    out = tmp_path / "imgs.npy"
    r = invoke("generate", "-m", rgb_model, "-n", 1001, "--seed", 9, "--batch-size", 100, "-o", out)
    assert r.exit_code == 0, r.output
    arr = np.load(out)
    assert arr.dtype == np.uint8 and arr.shape == (1001, 4, 5, 3)
    np.testing.assert_array_equal(arr, Generator.load(rgb_model).generate(1001, seed=9))


@pytest.mark.parametrize("trailing_slash", [True, False])
def test_generate_directory(rgb_model, tmp_path, trailing_slash):
    folder = tmp_path / "out"
    if not trailing_slash:
        folder.mkdir()
    r = invoke("generate", "-m", rgb_model, "-n", 12, "--seed", 1, "-o", str(folder) + ("/" if trailing_slash else ""))
    assert r.exit_code == 0, r.output
    files = sorted(folder.iterdir())
    assert [f.name for f in files][:2] == ["000000.png", "000001.png"] and len(files) == 12
    expected = Generator.load(rgb_model).generate(12, seed=1)
    np.testing.assert_array_equal(np.asarray(Image.open(files[11])), expected[11])


def test_png_folder_syncs_once_not_per_file(rgb_model, tmp_path, monkeypatch):
    import os

    from dcgan_deploy.images import write_pngs
    calls = {"fsync": 0, "sync": 0}
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.__setitem__("fsync", calls["fsync"] + 1), real_fsync(fd)))
    monkeypatch.setattr(os, "sync", lambda: calls.__setitem__("sync", calls["sync"] + 1))
    images = Generator.load(rgb_model).generate(20, seed=2)
    assert write_pngs([images[:8], images[8:]], tmp_path / "pngs", total=20) == 20
    # the files once, the new folder's entry once (and the staging folder's): not 2 x 20
    assert calls["sync"] == 1 and calls["fsync"] <= 2
    files = sorted((tmp_path / "pngs").iterdir())
    assert len(files) == 20 and not [f for f in files if f.name.endswith(".part")]
    np.testing.assert_array_equal(np.asarray(Image.open(files[19])), images[19])


@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "-n must be at least 1"),
    (["-n", "-4"], "-n must be at least 1"),
    (["--seed", "-1"], "seed"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["-n", "2000000", "-o", "big.png"], "megapixels"),
    (["-o", "out.jpg"], "cannot tell the output type"),
    (["-o", "/nonexistent-dir/x.png"], "output folder does not exist"),
    (["-m", "missing.onnx"], "no such model file"),
    (["-m", "no-such-bundled-name"], "no model file or bundled model"),
])
def test_generate_errors_are_one_line(tiny_model, tmp_path, monkeypatch, args, message):
    args = (["-m", str(tiny_model)] if "-m" not in args else []) + args
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["generate", *args])
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())


def test_unwritable_output(tiny_model, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):
        pytest.skip("running as a user that can write anywhere (root)")
    r = CliRunner().invoke(main, ["generate", "-m", str(tiny_model), "-o", str(ro / "x.png")])
    assert r.exit_code != 0 and "not writable" in r.output


def test_interrupted_npy_leaves_no_file(tiny_model, tmp_path, monkeypatch):
    """A failure mid-stream (here: the 3rd chunk) leaves no file under the final name."""
    calls = {"n": 0}
    real = Generator.run

    def flaky(self, z, label=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, z, label)

    monkeypatch.setattr(Generator, "run", flaky)
    out = tmp_path / "x.npy"
    out.write_bytes(b"previous contents")
    r = CliRunner().invoke(main, ["generate", "-m", str(tiny_model), "-n", "100", "--batch-size", "10", "-o", str(out)])
    assert r.exit_code != 0 and calls["n"] == 3
    assert out.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "x.npy"]


def test_interpolate_writes_strip_and_gif(tiny_model, tmp_path):
    stem = tmp_path / "walk"
    r = invoke("interpolate", "-m", tiny_model, "--seeds", "1,2,3", "--frames", 4, "-o", stem)
    assert r.exit_code == 0, r.output
    gif = Image.open(stem.with_suffix(".gif"))
    assert gif.n_frames == 9
    strip = np.asarray(Image.open(stem.with_suffix(".png")))
    gen = Generator.load(tiny_model)
    first = gen.generate(1, seed=1)[0, ..., 0]
    np.testing.assert_array_equal(strip[2:8, 2:8], first)  # frame 0 is seed 1's first image
    assert strip.shape[1] == 2 + 5 * 8  # 5 frames per row (frames + 1)


@pytest.mark.parametrize("args, message", [
    (["--seeds", "1"], "at least two seeds"),
    (["--seeds", "a,b"], "comma-separated"),
    (["--frames", "0"], "at least 1"),
    (["--frames", "600", "--seeds", "1,2,3"], "limit"),
])
def test_interpolate_errors(tiny_model, args, message):
    r = CliRunner().invoke(main, ["interpolate", "-m", str(tiny_model), *args])
    assert r.exit_code != 0 and message in r.output, r.output


def test_info_text_and_json(tiny_model):
    r = invoke("info", tiny_model)
    assert r.exit_code == 0 and "tiny-gemm" in r.output and "CPUExecutionProvider" in r.output
    assert "PASSED" in r.output
    facts = json.loads(invoke("info", tiny_model, "--json").output)
    assert facts["metadata"]["latent_dim"] == "8"
    assert facts["providers"]["active"] == ["CPUExecutionProvider"]
    assert facts["parity"]["passed"] is True


def test_info_on_a_non_model(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_text("nope")
    r = CliRunner().invoke(main, ["info", str(bad)])
    assert r.exit_code == 1 and "not a valid ONNX model" in r.output


@pytest.mark.parametrize("command", ["generate", "interpolate", "info"])
def test_help_has_an_example(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0 and "Example" in r.output and "dcgan-deploy " + command in r.output


def test_python_dash_m_entry_point(tiny_model, tmp_path):
    out = tmp_path / "g.png"
    r = subprocess.run([sys.executable, "-m", "dcgan_deploy", "generate", "-m", str(tiny_model), "-n", "4",
                        "--seed", "0", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.exists() and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["train", "export", "verify"])
def test_torch_commands_help_has_an_example(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0 and "Example" in r.output and "dcgan-deploy " + command in r.output


def run_with_stderr_on_a_terminal(args):
    """Run the CLI with stderr attached to a pseudo-terminal; returns what the terminal showed."""
    import fcntl
    import pty
    import struct
    import termios
    main_fd, replica_fd = pty.openpty()
    fcntl.ioctl(replica_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "dcgan_deploy", *args], stderr=replica_fd, stdout=subprocess.PIPE)
    os.close(replica_fd)
    shown = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    proc.wait()
    os.close(main_fd)
    assert proc.returncode == 0, shown
    return shown.decode(errors="replace")


def test_progress_bar_only_for_long_requests_on_a_terminal(tiny_model, tmp_path):
    long_run = ["generate", "-m", str(tiny_model), "-n", "5000", "-o", str(tmp_path / "a.npy")]
    assert "5000/5000" in run_with_stderr_on_a_terminal(long_run)
    short = run_with_stderr_on_a_terminal(["generate", "-m", str(tiny_model), "-n", "10", "-o", str(tmp_path / "b.npy")])
    assert "img/s" not in short and "10/10" not in short
    piped = subprocess.run([sys.executable, "-m", "dcgan_deploy", *long_run], capture_output=True, text=True)
    assert piped.returncode == 0 and "5000/5000" not in piped.stderr and "it/s" not in piped.stderr
